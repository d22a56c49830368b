import numpy as np
import pytest

from art_backdoor_ext.datasets import load_dataset


@pytest.mark.parametrize("name,shape,n_train,n_test", [("digits", (1, 8, 8), 1437, 360),
                                                        ("mnist-5k", (1, 28, 28), 4000, 1000)])
def test_bundled_shapes_ranges_and_balance(name, shape, n_train, n_test):
    (x, y), (xt, yt) = load_dataset(name)
    assert x.shape == (n_train,) + shape and xt.shape == (n_test,) + shape
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
    assert set(np.unique(y)) == set(range(10)) == set(np.unique(yt))
    # stratified: every class has the same share in train and test
    np.testing.assert_allclose(np.bincount(y) / len(y), np.bincount(yt) / len(yt), atol=0.01)


def test_channels_last_and_determinism():
    (x1, y1), _ = load_dataset("mnist-5k", channels_first=False)
    (x2, y2), _ = load_dataset("mnist-5k", channels_first=True)
    assert x1.shape == (4000, 28, 28, 1)
    np.testing.assert_array_equal(x1[..., 0], x2[:, 0])
    np.testing.assert_array_equal(y1, y2)
    (x3, _), _ = load_dataset("mnist-5k", seed=1)
    assert not np.array_equal(x2, x3)


def test_train_and_test_are_disjoint():
    (x, _), (xt, _) = load_dataset("digits")
    train = {row.tobytes() for row in x}
    assert sum(row.tobytes() in train for row in xt) < 5  # digits has a few duplicate images


@pytest.mark.parametrize("kwargs", [{"name": "imagenet"}, {"name": 3}, {"name": "digits", "test_size": 1.5}])
def test_bad_input_raises_value_error(kwargs):
    with pytest.raises(ValueError):
        load_dataset(**kwargs)


def test_full_dataset_needs_root():
    with pytest.raises(ValueError, match="root"):
        load_dataset("cifar10")


@pytest.mark.parametrize("name,expected", [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_missing_files_say_where_to_put_them(tmp_path, name, expected):
    with pytest.raises(FileNotFoundError, match=expected):
        load_dataset(name, root=str(tmp_path))
