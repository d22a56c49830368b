import numpy as np
import pytest

from art_backdoor_ext.estimators import framework_of, get_adapter
from art_backdoor_ext.models import make_classifier


@pytest.fixture(scope="module", params=["pytorch", "keras"])
def small(request, digits):
    (x, y), _ = digits
    if request.param == "keras":
        x = x.transpose(0, 2, 3, 1)
    clf = make_classifier(request.param, x_train=x[:300], y_train=y[:300], nb_epochs=2, batch_size=32)
    return clf, x[:50], y[:50]


def test_features_in_batches_match_single_pass(small):
    clf, x, _ = small
    a = get_adapter(clf)
    f1 = a.get_features(x, batch_size=7)
    f2 = a.get_features(x, batch_size=50)
    assert f1.shape == (50, 64)
    np.testing.assert_allclose(f1, f2, rtol=1e-4, atol=1e-5)
    conv = a.get_features(x[:3], layer="conv2", flatten=False)
    assert conv.ndim == 4 and 32 in conv.shape
    assert a.conv_layer_names() == ["conv1", "conv2"]


def test_log_prob_gradient_matches_finite_differences(small):
    clf, x, y = small
    a = get_adapter(clf)
    x0 = x[:2].astype(np.float64).astype(np.float32)
    logp, grad = a.log_prob_and_grad(x0, y[:2])
    probs = clf.predict(x0)
    probs = np.exp(probs - probs.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(np.exp(logp), probs[np.arange(2), y[:2]], rtol=1e-3)
    # a wrong class has a far from saturated log-probability: compare its gradient with central differences
    wrong = (y[:2] + 1) % 10
    _, grad = a.log_prob_and_grad(x0, wrong)
    direction = np.sign(grad)
    h = 1e-3
    lp_plus, _ = a.log_prob_and_grad(x0 + h * direction, wrong)
    lp_minus, _ = a.log_prob_and_grad(x0 - h * direction, wrong)
    numeric = (lp_plus - lp_minus) / (2 * h)
    analytic = np.abs(grad).reshape(2, -1).sum(1)
    np.testing.assert_allclose(numeric, analytic, rtol=0.05)


def test_clone_is_independent(small):
    clf, x, y = small
    a = get_adapter(clf)
    before = a.get_weights()
    clone = a.clone()
    assert type(clone) is type(clf)
    np.testing.assert_allclose(clone.predict(x), clf.predict(x), rtol=1e-5, atol=1e-5)
    get_adapter(clone).fit(x, y, nb_epochs=2, batch_size=16)
    for w0, w1 in zip(before, a.get_weights()):
        np.testing.assert_array_equal(w0, w1)  # original untouched by training the clone


def test_bad_layer_and_unsupported_classifier(small):
    clf, _, _ = small
    with pytest.raises(ValueError, match="Unknown layer"):
        get_adapter(clf).get_features(np.zeros((1,) + clf.input_shape, np.float32), layer="nope")
    with pytest.raises(ValueError, match="layer name"):
        get_adapter(clf).resolve_layer(3)
    with pytest.raises(ValueError, match="Unsupported classifier"):
        framework_of(object())
