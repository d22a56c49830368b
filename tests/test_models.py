import numpy as np
import pytest

from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.models import make_classifier, train_robust


@pytest.mark.parametrize("framework", ["pytorch", "keras"])
def test_feature_layer_is_where_art_looks(framework):
    clf = make_classifier(framework, input_shape=(1, 8, 8) if framework == "pytorch" else (8, 8, 1))
    # ART's ActivationDefence / SpectralSignatureDefense read layer_names[-1]: it must be the feature layer
    assert clf.layer_names[-1] == "feature"
    assert get_adapter(clf).feature_layer() == "feature"
    assert clf.clip_values is not None and tuple(np.asarray(clf.clip_values, float)) == (0.0, 1.0)


@pytest.mark.parametrize("framework", ["pytorch", "keras"])
def test_trains_on_digits_with_int_or_one_hot_labels(digits, framework):
    (x, y), (xt, yt) = digits
    if framework == "keras":
        x, xt = x.transpose(0, 2, 3, 1), xt.transpose(0, 2, 3, 1)
    clf = make_classifier(framework, x_train=x, y_train=y, nb_epochs=8, batch_size=32)
    acc = np.mean(get_adapter(clf).predict_labels(xt) == yt)
    assert acc > 0.85
    get_adapter(clf).fit(x[:64], np.eye(10)[y[:64]], nb_epochs=1)  # one-hot labels also train
    clf.fit(x[:64], y[:64], nb_epochs=1)  # and ART's own fit with integer labels


def test_trained_reference_cnn_reaches_90_percent_on_mnist5k(scenario_ctx):
    from art_backdoor_ext.evaluation import Scenario

    ctx = scenario_ctx(Scenario(attack=None, nb_epochs=5))
    assert ctx.clean_accuracy > 0.9


@pytest.mark.parametrize("kwargs,match", [
    ({"framework": "jax"}, "framework"),
    ({"width": "huge"}, "width"),
    ({"nb_classes": 1}, "nb_classes"),
    ({"input_shape": (28, 28)}, "input_shape"),
    ({"input_shape": (1, 2, 2)}, "4x4"),
    ({"x_train": np.zeros((4, 1, 8, 8), np.float32)}, "both"),
    ({"x_train": np.zeros((4, 1, 8, 8), np.float32), "y_train": np.array([0, 1, 2, 12])}, "classes"),
    ({"x_train": np.zeros((4, 1, 8, 8), np.float32), "y_train": np.array([0, 1, 2])}, "labels"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_classifier(**kwargs)


def test_train_robust_runs_and_resists_small_l2_attacks(digits):
    """L2 PGD training makes a model harder to flip with a small L2 PGD than standard training does."""
    from art.attacks.evasion import ProjectedGradientDescent

    (x, y), (xt, yt) = digits
    std = make_classifier("pytorch", x_train=x, y_train=y, nb_epochs=6, batch_size=32)
    rob = make_classifier("pytorch", x_train=x, y_train=y, nb_epochs=0)
    train_robust(rob, x, y, eps=0.5, eps_step=0.2, max_iter=5, nb_epochs=6, batch_size=32)

    def robust_acc(clf):
        pgd = ProjectedGradientDescent(clf, norm=2, eps=0.5, eps_step=0.1, max_iter=10, verbose=False)
        return np.mean(get_adapter(clf).predict_labels(pgd.generate(xt[:200])) == yt[:200])

    assert np.mean(get_adapter(rob).predict_labels(xt) == yt) > 0.8
    assert robust_acc(rob) > robust_acc(std) + 0.1
    with pytest.raises(ValueError):
        train_robust(rob, x, y, eps=0)
