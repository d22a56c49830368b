import numpy as np
import pytest

from art_backdoor_ext.attacks.poisoning import add_localised_trigger, localised_trigger, poison_dataset


@pytest.fixture(scope="module")
def data(digits):
    (x, y), _ = digits
    return x, y


@pytest.mark.parametrize("sources,n", [(3, 20), ([1, 2, 3], 20), (None, 10)])
def test_source_class_settings(data, sources, n):
    x, y = data
    x0, y0 = x.copy(), y.copy()
    pd = poison_dataset(x, y, localised_trigger(size=2), target=0, sources=sources, n_per_source=n)
    k = 1 if isinstance(sources, int) else (3 if sources else 9)
    assert pd.nb_poison == n * k and len(pd.sources) == k
    assert len(pd.x) == len(x)  # originals removed: same size
    assert np.all(pd.y[pd.is_poison] == 0)
    # every poisoned image carries the trigger; clean ones are untouched originals
    np.testing.assert_array_equal(pd.x[pd.is_poison][:, :, -3:-1, -3:-1], 1.0)
    assert np.array_equal(x, x0) and np.array_equal(y, y0)  # inputs not mutated
    # the originals of the poisoned images are gone
    kept = {row.tobytes() for row in pd.x[~pd.is_poison]}
    assert not any(x[i].tobytes() in kept for i in pd.source_indices)
    x_u, y_u, mask = pd  # unpacks like a tuple
    assert x_u is pd.x and mask is pd.is_poison


def test_fraction_and_keep_originals(data):
    x, y = data
    pd = poison_dataset(x, y, add_localised_trigger, target=7, fraction=0.1, seed=3)
    assert abs(pd.poison_fraction - 0.1) < 0.002
    pd2 = poison_dataset(x, y, add_localised_trigger, target=7, fraction=0.1, remove_originals=False)
    assert abs(pd2.poison_fraction - 0.1) < 0.002 and len(pd2.x) > len(x)


def test_deterministic_for_a_seed(data):
    x, y = data
    a = poison_dataset(x, y, add_localised_trigger, 1, 2, n_per_source=15, seed=5)
    b = poison_dataset(x, y, add_localised_trigger, 1, 2, n_per_source=15, seed=5)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.source_indices, b.source_indices)


def test_art_attack_and_one_hot_labels(data):
    from art.attacks.poisoning import PoisoningAttackBackdoor

    x, y = data
    pd = poison_dataset(x, np.eye(10)[y], PoisoningAttackBackdoor(add_localised_trigger), 4, [0, 1],
                        n_per_source=5)
    assert pd.nb_poison == 10 and np.all(pd.y[pd.is_poison] == 4)


@pytest.mark.parametrize("kwargs,match", [
    ({"target": 10, "n_per_source": 5}, "target"),
    ({"target": 0, "sources": [0, 1], "n_per_source": 5}, "target class"),
    ({"target": 0}, "exactly one"),
    ({"target": 0, "n_per_source": 5, "fraction": 0.1}, "exactly one"),
    ({"target": 0, "fraction": 1.5}, "fraction"),
    ({"target": 0, "sources": 1, "n_per_source": 10_000}, "only"),
    ({"target": 0, "sources": [12], "n_per_source": 5}, "out of range"),
])
def test_bad_input(data, kwargs, match):
    x, y = data
    with pytest.raises(ValueError, match=match):
        poison_dataset(x, y, add_localised_trigger, **kwargs)


def test_mismatched_lengths_and_bad_labels(data):
    x, y = data
    with pytest.raises(ValueError, match="labels"):
        poison_dataset(x[:10], y[:9], add_localised_trigger, 0, n_per_source=1)
    with pytest.raises(ValueError, match="negative"):
        poison_dataset(x[:10], -np.ones(10, int), add_localised_trigger, 0, n_per_source=1)
