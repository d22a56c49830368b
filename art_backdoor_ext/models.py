"""
Reference networks, ART classifier factories and L2 adversarial (robust) training.

Two CNNs exist for each framework, with identical layer names:

* ``"compact"``: conv1 (16) - conv2 (32) - feature (64-d), the small MNIST CNN of the papers' MNIST experiments;
* ``"wide"``: conv1 (32) - conv2 (128) - feature (256-d), wide enough for fine-pruning and for the wide-feature regime
  where cluster impurity collapses.

Layers: ``conv1, relu1, pool1, conv2, relu2, pool2, flatten, fc, logits`` and ``feature`` (the penultimate, post-ReLU
representation). In the PyTorch networks ``feature`` is registered *last* so that ART's ``ActivationDefence`` and
``SpectralSignatureDefense`` (which read ``classifier.layer_names[-1]``) use it; in the Keras networks ``feature`` is the
layer just before ``logits``, which is what ART's Keras wrapper reports last. Models output logits.

Robust training follows the AEGIS paper (Madry et al., L2 PGD, eps 0.5): https://arxiv.org/abs/2003.00865
"""
from __future__ import annotations

import contextlib
import logging
import random
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from art_backdoor_ext.utils import check_bool, check_int, check_number, check_range, check_seed, check_xy

logger = logging.getLogger(__name__)

WIDTHS = {"compact": (16, 32, 64), "wide": (32, 128, 256)}
FRAMEWORKS = ("pytorch", "keras")


def _check_width(width: str) -> Tuple[int, int, int]:
    if width not in WIDTHS:
        raise ValueError(f"width must be one of {sorted(WIDTHS)}, got {width!r}.")
    return WIDTHS[width]


def _check_layout(image_shape: Sequence[int], framework: str) -> None:
    """``ValueError`` naming the transpose when images are in the other framework's layout (ART: ``NCHW`` for PyTorch,
    ``NHWC`` for Keras)."""
    from art_backdoor_ext.layout import CHANNEL_SIZES

    shape = tuple(int(s) for s in image_shape)
    first, last = shape[0] in CHANNEL_SIZES, shape[-1] in CHANNEL_SIZES
    if framework == "pytorch" and last and not first:
        raise ValueError(f"x_train holds channels-last images {shape}, but PyTorch models take channels-first (N, C, H, "
                         "W) batches (ART's layout): transpose it with np.transpose(x, (0, 3, 1, 2)).")
    if framework == "keras" and first and not last:
        raise ValueError(f"x_train holds channels-first images {shape}, but Keras models take channels-last (N, H, W, "
                         "C) batches (ART's layout): transpose it with np.transpose(x, (0, 2, 3, 1)).")


def _check_shape(input_shape: Sequence[int], channels_first: bool) -> Tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (H, W, C) with positive sizes, got {input_shape}.")
    h, w = (shape[1], shape[2]) if channels_first else (shape[0], shape[1])
    if h < 4 or w < 4:
        raise ValueError(f"Images must be at least 4x4 (two 2x2 poolings), got {h}x{w}.")
    return shape


def build_pytorch_cnn(input_shape: Sequence[int] = (1, 28, 28), nb_classes: int = 10, width: str = "compact"):
    """A reference CNN as a ``torch.nn.Module`` taking ``(N, C, H, W)`` input and returning logits."""
    import torch
    from torch import nn

    c1, c2, hidden = _check_width(width)
    channels, height, width_px = _check_shape(input_shape, channels_first=True)

    class ReferenceCNN(nn.Module):
        """conv-relu-pool x2, fc, ReLU feature layer (registered last), logits."""

        feature_layer = "feature"

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(channels, c1, 3, padding=1)
            self.relu1 = nn.ReLU()
            self.pool1 = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
            self.relu2 = nn.ReLU()
            self.pool2 = nn.MaxPool2d(2)
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(c2 * (height // 4) * (width_px // 4), hidden)
            self.logits = nn.Linear(hidden, nb_classes)
            self.feature = nn.ReLU()  # registered last: ART's AC/SS read layer_names[-1]

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            x = self.pool1(self.relu1(self.conv1(x)))
            x = self.pool2(self.relu2(self.conv2(x)))
            return self.logits(self.feature(self.fc(self.flatten(x))))

    return ReferenceCNN()


def build_keras_cnn(input_shape: Sequence[int] = (28, 28, 1), nb_classes: int = 10, width: str = "compact"):
    """A reference CNN as a Keras 3 functional model taking ``(N, H, W, C)`` input and returning logits."""
    from art_backdoor_ext.estimators import load_torch_before_tensorflow

    load_torch_before_tensorflow()
    import keras
    from keras import layers

    c1, c2, hidden = _check_width(width)
    shape = _check_shape(input_shape, channels_first=False)
    inp = keras.Input(shape=shape, name="input")
    x = layers.Conv2D(c1, 3, padding="same", name="conv1")(inp)
    x = layers.ReLU(name="relu1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(c2, 3, padding="same", name="conv2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(hidden, name="fc")(x)
    x = layers.ReLU(name="feature")(x)
    out = layers.Dense(nb_classes, name="logits")(x)
    return keras.Model(inp, out, name=f"reference_cnn_{width}")


def _keras_loss():
    """Cross-entropy on logits that takes integer or one-hot labels (ART's Keras ``fit`` passes either)."""
    import keras

    @keras.saving.register_keras_serializable(package="art_backdoor_ext")
    class FlexibleCrossentropy(keras.losses.Loss):
        """Categorical cross-entropy from logits for one-hot targets, sparse for integer targets."""

        def __init__(self, name: str = "flexible_crossentropy", **kwargs) -> None:
            super().__init__(name=name, **kwargs)

        def call(self, y_true, y_pred):
            if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == y_pred.shape[-1] != 1:
                return keras.losses.categorical_crossentropy(y_true, y_pred, from_logits=True)
            return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)

    return FlexibleCrossentropy()


def make_classifier(
    framework: str = "pytorch",
    input_shape: Optional[Sequence[int]] = None,
    nb_classes: int = 10,
    width: str = "compact",
    x_train: Optional[np.ndarray] = None,
    y_train: Optional[np.ndarray] = None,
    nb_epochs: int = 5,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    verbose: bool = False,
):
    """
    Build a reference CNN wrapped in an ART classifier (``PyTorchClassifier`` or ``KerasClassifier``) with
    ``clip_values=(0, 1)`` and an Adam optimiser; train it when ``x_train``/``y_train`` are given.

    :param framework: ``"pytorch"`` (channels-first input) or ``"keras"`` (channels-last input).
    :param input_shape: Shape of one image; inferred from ``x_train`` when omitted (default MNIST-sized).
    :param nb_classes: Number of classes.
    :param width: ``"compact"`` or ``"wide"``.
    :param x_train: Training images (optional).
    :param y_train: Integer or one-hot labels (optional, needed with ``x_train``).
    :param nb_epochs: Training epochs.
    :param batch_size: Training batch size.
    :param learning_rate: Adam learning rate.
    :param seed: Seed for weights and data order (a non-negative integer). The global generators this seeds (numpy,
                 Python's ``random``, torch's) are restored afterwards: the caller's random state is untouched.
    :param verbose: Show training progress.
    """
    check_seed("seed", seed, allow_none=False)
    with _global_random_state_kept(framework):
        return _make_classifier(framework, input_shape, nb_classes, width, x_train, y_train, nb_epochs, batch_size,
                                learning_rate, seed, verbose)


@contextlib.contextmanager
def _global_random_state_kept(framework: str) -> Iterator[None]:
    """Restore numpy's, Python's and (for PyTorch) torch's global generators after the block."""
    np_state, py_state = np.random.get_state(), random.getstate()
    torch_state = None
    if framework == "pytorch":
        import torch

        torch_state = torch.get_rng_state()
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
        if torch_state is not None:
            import torch

            torch.set_rng_state(torch_state)


def _make_classifier(framework, input_shape, nb_classes, width, x_train, y_train, nb_epochs, batch_size, learning_rate,
                     seed, verbose):
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}.")
    nb_classes = check_int("nb_classes", nb_classes, low=2)
    _check_width(width)
    nb_epochs = check_int("nb_epochs", nb_epochs, low=0, hint="0 = build without training")
    batch_size = check_int("batch_size", batch_size, low=1)
    learning_rate = check_number("learning_rate", learning_rate, low=0, low_open=True)
    check_bool("verbose", verbose)
    if (x_train is None) != (y_train is None):
        raise ValueError("Pass both x_train and y_train to train the classifier, or neither.")
    labels = None
    if x_train is not None:
        x_train, labels = check_xy(x_train, y_train, nb_classes, "x_train", "y_train")
        if x_train.ndim != 4 or len(x_train) == 0:
            raise ValueError(f"x_train must be a non-empty batch of images (N, C, H, W) or (N, H, W, C); got "
                             f"{x_train.shape}.")
        _check_layout(x_train.shape[1:], framework)
        check_range(x_train, 0.0, 1.0, name="x_train")
        if input_shape is not None and tuple(input_shape) != x_train.shape[1:]:
            raise ValueError(f"input_shape {tuple(input_shape)} does not match x_train images {x_train.shape[1:]}.")
        input_shape = x_train.shape[1:]
    if input_shape is None:
        input_shape = (1, 28, 28) if framework == "pytorch" else (28, 28, 1)

    if framework == "pytorch":
        import torch
        from art.estimators.classification import PyTorchClassifier

        torch.manual_seed(seed)
        model = build_pytorch_cnn(input_shape, nb_classes, width)
        classifier = PyTorchClassifier(
            model=model,
            loss=torch.nn.CrossEntropyLoss(),
            optimizer=torch.optim.Adam(model.parameters(), lr=learning_rate),
            input_shape=tuple(input_shape),
            nb_classes=nb_classes,
            clip_values=(0.0, 1.0),
            channels_first=True,
            device_type="gpu",  # ART uses CUDA when present and falls back to the CPU
        )
    else:
        from art_backdoor_ext.estimators import load_torch_before_tensorflow

        load_torch_before_tensorflow()
        import keras
        from art.estimators.classification import KerasClassifier

        keras.utils.set_random_seed(seed)
        model = build_keras_cnn(input_shape, nb_classes, width)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=_keras_loss(), metrics=["accuracy"])
        classifier = KerasClassifier(model=model, use_logits=True, clip_values=(0.0, 1.0), channels_first=False)

    if x_train is not None and nb_epochs > 0:
        from art_backdoor_ext.estimators import get_adapter

        np.random.seed(seed)
        logger.info("Training %s %s CNN on %d images for %d epochs.", framework, width, len(x_train), nb_epochs)
        get_adapter(classifier).fit(x_train, labels, nb_epochs=nb_epochs, batch_size=batch_size, verbose=verbose)
    return classifier


def train_robust(
    classifier,
    x: np.ndarray,
    y: np.ndarray,
    eps: float = 0.5,
    eps_step: float = 0.15,
    max_iter: int = 7,
    nb_epochs: int = 5,
    batch_size: int = 64,
    ratio: float = 1.0,
    seed: int = 0,
    verbose: bool = False,
):
    """
    L2 PGD adversarial training (Madry et al.) in place through ART's ``AdversarialTrainer`` with a
    ``ProjectedGradientDescent(norm=2)`` attack, as the AEGIS paper trains its robust models (eps 0.5; the paper used
    step 1.5 and 20 steps on a GPU, 7 steps keep it affordable on a CPU).

    :param classifier: ART classifier to train (modified in place and returned).
    :param x: Training images.
    :param y: Integer or one-hot labels.
    :param eps: L2 radius of the adversarial examples.
    :param eps_step: PGD step size.
    :param max_iter: PGD steps per batch.
    :param nb_epochs: Epochs.
    :param batch_size: Batch size.
    :param ratio: Fraction of each batch replaced by adversarial examples (1.0 = Madry et al.).
    :param seed: Seed for the data order and PGD's random start; the caller's global random state is restored.
    :param verbose: Progress bar over epochs.
    :return: The classifier.
    """
    from art_backdoor_ext.estimators import get_adapter

    check_number("eps", eps, low=0, low_open=True, hint="the AEGIS paper: 0.5")
    check_number("eps_step", eps_step, low=0, low_open=True)
    check_int("max_iter", max_iter, low=1)
    check_int("nb_epochs", nb_epochs, low=1)
    check_int("batch_size", batch_size, low=1)
    check_number("ratio", ratio, low=0, high=1, low_open=True, hint="1.0 = Madry et al.")
    check_bool("verbose", verbose)
    check_seed("seed", seed, allow_none=False)
    adapter = get_adapter(classifier)
    x, labels = check_xy(x, y, adapter.nb_classes)
    if len(x) == 0:
        raise ValueError("x is empty: train_robust needs training images.")
    x = adapter.check_input(x, "x")
    # seeds numpy's and the framework's global generators (ART's data order, the data loader's shuffle) and restores
    # them afterwards
    with adapter.seeded(seed):
        _adversarial_training(classifier, adapter, x, labels, eps, eps_step, max_iter, nb_epochs, batch_size, ratio)
    return classifier


def _adversarial_training(classifier, adapter, x, labels, eps, eps_step, max_iter, nb_epochs, batch_size, ratio):
    from art.attacks.evasion import ProjectedGradientDescent
    from art.defences.trainer import AdversarialTrainer

    pgd = ProjectedGradientDescent(
        classifier, norm=2, eps=eps, eps_step=eps_step, max_iter=max_iter, num_random_init=0, batch_size=batch_size,
        verbose=False,
    )
    trainer = AdversarialTrainer(classifier, attacks=pgd, ratio=ratio)
    logger.info("L2 PGD adversarial training: eps=%.2f, %d steps, %d epochs.", eps, max_iter, nb_epochs)
    # ART's AdversarialTrainer shows its own epoch bar and passes verbose=0 to the classifier itself
    trainer.fit(x, adapter._fit_labels(labels), nb_epochs=nb_epochs, batch_size=batch_size)  # pylint: disable=W0212
