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


@pytest.mark.parametrize("framework", ["pytorch", "keras"])
def test_fit_output_layer_retrains_only_the_head(framework, digits):
    """A destroyed head is retrained back from frozen features: only its weights move, the latents stay, seeded."""
    (x, y), _ = digits
    if framework == "keras":
        x = x.transpose(0, 2, 3, 1)
    x, y = x[:300], y[:300]
    clf = make_classifier(framework, x_train=x, y_train=y, nb_epochs=15, batch_size=32)
    a = get_adapter(clf)
    acc0 = np.mean(a.predict_labels(x) == y)
    twins = [get_adapter(a.clone()) for _ in range(2)]
    feats0, w0 = twins[0].get_features(x), twins[0].get_weights()
    names = [t.reset_output_layer(3) for t in twins]
    broken = np.mean(twins[0].predict_labels(x) == y)
    state = np.random.get_state()
    assert [t.fit_output_layer(x, np.eye(10)[y], nb_epochs=30, seed=0) for t in twins] == names
    assert np.array_equal(np.random.get_state()[1], state[1])  # the global generator is untouched
    np.testing.assert_array_equal(twins[0].get_features(x), feats0)  # the latents do not move
    w1 = twins[0].get_weights()
    changed = [not np.array_equal(p, q) for p, q in zip(w0, w1)]
    k = sum(changed)
    assert k in (1, 2) and changed == [False] * (len(changed) - k) + [True] * k  # the head's kernel (and bias)
    assert all(np.array_equal(p, q) for p, q in zip(w1, twins[1].get_weights()))  # deterministic under a seed
    assert np.mean(twins[0].predict_labels(x) == y) >= min(acc0 - 0.05, 0.9) and broken < acc0 - 0.3
    assert all(np.array_equal(p, q) for p, q in zip(get_adapter(clf).get_weights(), a.get_weights()))
