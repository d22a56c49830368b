"""Weights on disk through the adapter: a round trip restores the predictions, and nothing is unpickled on load."""
from __future__ import annotations

import os

import numpy as np
import pytest

from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.models import make_classifier


@pytest.mark.parametrize("framework", ["pytorch", "keras"])
def test_save_and_load_weights_round_trip(framework, digits, tmp_path):
    (x, y), (x_test, _) = digits
    if framework == "keras":
        x, x_test = np.moveaxis(x, 1, -1), np.moveaxis(x_test, 1, -1)
    trained = make_classifier(framework, x_train=x[:300], y_train=y[:300], nb_epochs=1, seed=0)
    adapter = get_adapter(trained)
    path = str(tmp_path / ("model" + adapter.weights_suffix))
    adapter.save_weights(path)
    assert os.path.getsize(path) > 0
    fresh = make_classifier(framework, input_shape=x.shape[1:], nb_classes=10, nb_epochs=0, seed=1)
    assert not np.allclose(fresh.predict(x_test[:20]), trained.predict(x_test[:20]))
    get_adapter(fresh).load_weights(path)
    np.testing.assert_allclose(fresh.predict(x_test[:20]), trained.predict(x_test[:20]), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pytorch_load_refuses_pickled_code(tmp_path):
    import pickle

    class Payload:  # anything that is not plain tensors must not be unpickled
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = str(tmp_path / "evil.pt")
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": Payload()}, f)
    clf = make_classifier("pytorch", input_shape=(1, 8, 8), nb_classes=10, nb_epochs=0)
    with pytest.raises(pickle.UnpicklingError):  # torch.load(weights_only=True) refuses os.system
        get_adapter(clf).load_weights(path)
