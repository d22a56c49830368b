"""
Bad input gets a clear error naming the argument, never a silent wrong answer: wrong scale (0-255, [-1, 1]), wrong
layout, NaN, labels and targets out of range, vanishing patterns; plus property-based checks (hypothesis) of the
triggers, ``poison_dataset`` and the metrics against hand-computed references.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from art_backdoor_ext.attacks.poisoning import add_pattern, localised_trigger, make_pattern, poison_dataset
from art_backdoor_ext.metrics import attack_success_rate, filtering_rates


@pytest.fixture(scope="module")
def small(digits):
    from art_backdoor_ext.models import make_classifier

    (x, y), (xt, yt) = digits
    x = np.round(x * 255) / 255
    clf = make_classifier("pytorch", x_train=x[:300], y_train=y[:300], nb_epochs=2, seed=0)
    return clf, x[:300].astype(np.float32), y[:300], xt[:100].astype(np.float32), yt[:100]


# ---------------------------------------------------------------------------------------------- defences and metrics
def _defences():
    from art_backdoor_ext.defences.detector.poison import (AEGISDefence, ClusterImpurityDefence,
                                                          ReverseEngineeringDefence)

    return [AEGISDefence, ClusterImpurityDefence, ReverseEngineeringDefence]


@pytest.mark.parametrize("index", range(3))
def test_defences_reject_wrong_scale_and_layout(small, index):
    cls = _defences()[index]
    clf, x, y, _, _ = small
    with pytest.raises(ValueError, match=r"x_train .*scale your images to \[0, 1\]"):
        cls(clf, x * 255, y)
    with pytest.raises(ValueError, match=r"x_train .*\(x \+ 1\) / 2"):
        cls(clf, x * 2 - 1, y)
    with pytest.raises(ValueError, match=r"x_train .*np.transpose\(x, \(0, 3, 1, 2\)\)"):
        cls(clf, np.transpose(x, (0, 2, 3, 1)), y)
    x_nan = x.copy()
    x_nan[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="x_train contains NaN"):
        cls(clf, x_nan, y)
    with pytest.raises(ValueError, match="y_train holds label 12"):
        cls(clf, x, np.where(np.arange(len(y)) == 0, 12, y))


def test_metrics_reject_invalid_targets_labels_and_markings(small):
    clf, _, _, xt, yt = small
    trigger = localised_trigger(size=2)
    with pytest.raises(ValueError, match="target must be a class index in \\[0, 10\\)"):
        attack_success_rate(clf, xt, yt, trigger, target=15)
    with pytest.raises(ValueError, match="y holds label 10"):
        attack_success_rate(clf, xt, np.full(len(yt), 10), trigger, target=1)
    with pytest.raises(ValueError, match="trigger\\(x\\) contains NaN"):
        attack_success_rate(clf, xt, yt, lambda x: x * np.nan, target=1)
    with pytest.raises(ValueError, match="scale your images"):
        attack_success_rate(clf, xt * 255, yt, trigger, target=1)
    with pytest.raises(ValueError, match="is_clean must contain only 0"):
        filtering_rates(np.full(len(yt), 0.5), np.zeros(len(yt), bool), yt, 1)


def test_poison_dataset_rejects_bad_input(digits):
    (x, y), _ = digits
    trig = localised_trigger(size=2)
    with pytest.raises(ValueError, match="nb_classes is 5"):
        poison_dataset(x, y, trig, target=1, sources=[2], n_per_source=5, nb_classes=5)
    with pytest.raises(ValueError, match="nb_classes must be an integer >= 2"):
        poison_dataset(x, y, trig, target=1, sources=[2], n_per_source=5, nb_classes=0)
    with pytest.raises(ValueError, match="scale your images"):
        poison_dataset(x * 255, y, trig, target=1, sources=[2], n_per_source=5)
    with pytest.raises(ValueError, match="NaN"):
        poison_dataset(x, y, lambda v: v * np.nan, target=1, sources=[2], n_per_source=5)
    with pytest.raises(ValueError, match="fraction"):
        poison_dataset(x, y, trig, target=1, fraction=1.5)
    with pytest.raises(ValueError, match="n_per_source"):
        poison_dataset(x, y, trig, target=1, sources=[2], n_per_source=2.5)
    with pytest.raises(ValueError, match="seed"):
        poison_dataset(x, y, trig, target=1, sources=[2], n_per_source=5, seed=-1)


def test_vanishing_pattern_magnitude_is_refused():
    with pytest.raises(ValueError, match="magnitude .* half a grey level"):
        make_pattern("A", (1, 28, 28), magnitude=0.001)
    assert np.abs(make_pattern("A", (1, 28, 28), magnitude=1 / 255)).max() == pytest.approx(1 / 255)


# ---------------------------------------------------------------------------------------------- properties
_GRID = st.integers(0, 255).map(lambda v: v / 255.0)


@st.composite
def _batches(draw):
    n, h, w = draw(st.integers(1, 4)), draw(st.integers(6, 10)), draw(st.integers(6, 10))
    values = draw(st.lists(_GRID, min_size=n * h * w, max_size=n * h * w))
    return np.asarray(values, np.float32).reshape(n, 1, h, w)


@settings(max_examples=30, deadline=None)
@given(x=_batches(), kind=st.sampled_from(list("ABCDEF")), seed=st.integers(0, 2 ** 16))
def test_patterns_stay_on_the_grid_and_never_mutate(x, kind, seed):
    pattern = make_pattern(kind, x.shape[1:], seed=seed, channels_first=True, size=3)
    x_before = x.copy()
    out = add_pattern(x, pattern, channels_first=True)
    np.testing.assert_array_equal(x, x_before)
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(out * 255, np.round(out * 255), atol=1e-4)  # the 8-bit grid
    np.testing.assert_array_equal(make_pattern(kind, x.shape[1:], seed=seed, channels_first=True, size=3), pattern)
    reference = np.round(np.clip(x + pattern, 0, 1) * 255) / 255
    np.testing.assert_allclose(out, reference, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(n_per_source=st.integers(1, 20), seed=st.integers(0, 1000), target=st.integers(0, 9))
def test_poison_dataset_properties(digits, n_per_source, seed, target):
    (x, y), _ = digits
    x_before = x.copy()
    sources = [(target + 1) % 10, (target + 2) % 10]
    data = poison_dataset(x, y, localised_trigger(size=2), target=target, sources=sources,
                          n_per_source=n_per_source, seed=seed)
    np.testing.assert_array_equal(x, x_before)
    assert data.x.shape == x.shape and data.x.dtype == np.float32  # the originals are replaced
    assert data.is_poison.sum() == 2 * n_per_source and np.all(data.y[data.is_poison] == target)
    assert np.all(np.isfinite(data.x)) and data.x.min() >= 0 and data.x.max() <= 1
    again = poison_dataset(x, y, localised_trigger(size=2), target=target, sources=sources,
                           n_per_source=n_per_source, seed=seed)
    np.testing.assert_array_equal(again.x, data.x)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 3)), min_size=1, max_size=60))
def test_filtering_rates_match_a_hand_count(rows):
    flagged = np.array([r[0] for r in rows])
    poison = np.array([r[1] for r in rows])
    labels = np.array([r[2] for r in rows])
    rates = filtering_rates((~flagged).astype(int), poison, labels, target=1)
    n_poison = poison.sum()
    expected_tpr = (flagged & poison).sum() / n_poison if n_poison else np.nan
    clean_t = ~poison & (labels == 1)
    expected_fpr_t = (flagged & clean_t).sum() / clean_t.sum() if clean_t.sum() else np.nan
    np.testing.assert_equal(rates.tpr, expected_tpr)
    np.testing.assert_equal(rates.fpr_target, expected_fpr_t)
    assert rates.nb_flagged == flagged.sum()
    for value in (rates.tpr, rates.fpr_target, rates.fpr):
        assert np.isnan(value) or 0 <= value <= 1


def test_fine_pruning_refuses_too_little_clean_data_and_warns_when_nothing_is_pruned(small):
    import warnings

    from art_backdoor_ext.defences.transformer.poisoning import FinePruning

    clf, _, _, xt, yt = small
    with pytest.raises(ValueError, match="min_clean=100"):
        FinePruning(clf, nb_epochs=1)(xt[:1], yt[:1])
    with pytest.raises(ValueError, match="scale your images"):
        FinePruning(clf, nb_epochs=0)(xt * 255, yt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = FinePruning(clf, step=100, nb_epochs=0)
        pruner(xt, yt)
    assert pruner.report_["nb_pruned"] == 0
    assert any("pruned no channel" in str(w.message) for w in caught)
    assert any("Wilson interval" in str(w.message) for w in caught)  # 100 images cannot resolve a 4-point drop
