"""The framework-neutral interface every adapter implements."""
from __future__ import annotations

import abc
import contextlib
import logging
from typing import Iterator, List, Optional, Tuple

import numpy as np

from art_backdoor_ext.utils import batches, check_images, check_range, to_labels

logger = logging.getLogger(__name__)


class FrameworkAdapter(abc.ABC):
    """
    Wraps an ART classifier and gives attacks and defences what they need from the underlying model, independent of
    the framework: layer features in batches, gradients of class log-probabilities on whole batches, cloning, training
    and channel pruning. Obtain one with :func:`art_backdoor_ext.estimators.get_adapter`.
    """

    framework: str = ""

    def __init__(self, classifier) -> None:
        self.classifier = classifier

    # ----------------------------------------------------------------------------------------------- introspection
    @property
    def nb_classes(self) -> int:
        return int(self.classifier.nb_classes)

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return tuple(self.classifier.input_shape)

    @property
    def channels_first(self) -> bool:
        return bool(self.classifier.channels_first)

    @property
    @abc.abstractmethod
    def layer_names(self) -> List[str]:
        """Names of all addressable layers, in model order (dotted module names for PyTorch)."""

    @abc.abstractmethod
    def conv_layer_names(self) -> List[str]:
        """Names of the 2-D convolution layers, in model order."""

    def feature_layer(self) -> str:
        """
        Name of the penultimate (feature) layer: the model's ``feature_layer`` attribute when it has one (all reference
        models do), else the last layer before the output layer.
        """
        name = self._declared_feature_layer()
        if name is not None:
            return name
        names = self.layer_names
        if len(names) < 2:
            raise ValueError("Cannot infer the penultimate layer of this model; pass layer=<name> explicitly.")
        return names[-2]

    @abc.abstractmethod
    def _declared_feature_layer(self) -> Optional[str]:
        """The feature layer the model declares, if any."""

    def resolve_layer(self, layer: Optional[str]) -> str:
        """Check a layer name (``None`` = the penultimate layer) and return it."""
        if layer is None:
            return self.feature_layer()
        if not isinstance(layer, str):
            raise ValueError(f"layer must be a layer name (str) or None, got {layer!r}; indices are unreliable in ART.")
        if layer not in self.layer_names:
            raise ValueError(f"Unknown layer {layer!r}; the model's layers are: {', '.join(self.layer_names)}.")
        return layer

    # ----------------------------------------------------------------------------------------------- validation
    @property
    def clip_values(self) -> Tuple[float, float]:
        """The classifier's input range (ART's ``clip_values``; (0, 1) when it declares none)."""
        clip = getattr(self.classifier, "clip_values", None)
        if clip is None:
            return 0.0, 1.0
        return float(np.min(clip[0])), float(np.max(clip[1]))

    def check_input(self, x: np.ndarray, name: str = "x") -> np.ndarray:
        """
        Validate a batch of images for this classifier and return it as float32 (not copied when it already is):
        numeric and finite, one image's shape equal to the classifier's ``input_shape`` (with the transpose to apply
        when the batch is in the other layout), values inside the classifier's ``clip_values``.

        :raises ValueError: Naming ``name`` and what to do.
        """
        x = check_images(x, name)
        expected = self.input_shape
        if tuple(x.shape[1:]) != expected:
            msg = f"{name} holds images of shape {tuple(x.shape[1:])} but the classifier expects {expected}"
            if x.ndim == 4 and len(expected) == 3:
                if tuple(x.shape[1:]) == (expected[1], expected[2], expected[0]):
                    msg += (" (channels-first, ART's layout for PyTorch models); your batch is channels-last: "
                            "transpose it with np.transpose(x, (0, 3, 1, 2))")
                elif tuple(x.shape[1:]) == (expected[2], expected[0], expected[1]):
                    msg += (" (channels-last, ART's layout for Keras models); your batch is channels-first: "
                            "transpose it with np.transpose(x, (0, 2, 3, 1))")
            raise ValueError(msg + ".")
        check_range(x, *self.clip_values, name=name)
        return x

    # ----------------------------------------------------------------------------------------------- computation
    @abc.abstractmethod
    def _features_batch(self, x: np.ndarray, layer: str) -> np.ndarray:
        """Activations of ``layer`` for one batch."""

    def get_features(self, x: np.ndarray, layer: Optional[str] = None, batch_size: int = 256,
                     flatten: bool = True) -> np.ndarray:
        """
        Activations of a named layer (``None`` = penultimate) for all of ``x``, computed in batches without gradients.

        :return: Array ``(N, D)`` when ``flatten`` else the layer's native shape.
        """
        layer = self.resolve_layer(layer)
        x = np.asarray(x, dtype=np.float32)
        outs = [self._features_batch(x[s], layer) for s in batches(len(x), batch_size)]
        feats = np.concatenate(outs) if outs else np.zeros((0,), np.float32)
        return feats.reshape(len(x), -1) if flatten else feats

    def predict_labels(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Predicted class indices."""
        if len(x) == 0:
            return np.zeros((0,), np.int64)
        with self.seeded(None):  # ART's PyTorch predict draws a data-loader seed from torch's global generator
            return np.argmax(self.classifier.predict(np.asarray(x, np.float32), batch_size=batch_size), axis=1)

    @abc.abstractmethod
    def log_prob_and_grad(self, x: np.ndarray, labels: np.ndarray,
                          complement: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """
        For one batch: ``log p_label(x)`` (shape ``(N,)``) and its gradient with respect to ``x`` (shape of ``x``),
        in one forward/backward pass. Model outputs are treated as logits unless they already are probabilities; a
        model whose output layer is a softmax (PyTorch ``nn.Softmax``; Keras ``Softmax``/``Activation("softmax")`` or
        a ``Dense(..., activation="softmax")``) is differentiated through the logits that feed that softmax, so that
        saturated float32 probabilities never flatten the gradients.

        :param complement: Optional boolean mask ``(N,)``: for the images where it is true, return
                           ``log(1 - p_label(x))`` and its gradient instead, computed stably as the log-sum of the
                           other classes' probabilities (``1 - p`` underflows to 0 in float32 for confident images).
        """

    def fit(self, x: np.ndarray, y: np.ndarray, nb_epochs: int = 5, batch_size: int = 64, verbose: bool = False,
            **kwargs) -> None:
        """Train the wrapped classifier in place through ART's ``fit``."""
        self.classifier.fit(np.asarray(x, np.float32), self._fit_labels(y), batch_size=batch_size,
                            nb_epochs=nb_epochs, verbose=verbose, **kwargs)

    def _fit_labels(self, y: np.ndarray) -> np.ndarray:
        labels = to_labels(y, self.nb_classes)
        return np.eye(self.nb_classes, dtype=np.float32)[labels]

    @abc.abstractmethod
    def clone(self, reset_weights: bool = False):
        """A new ART classifier of the same type around a deep copy of the model (weights copied unless reset)."""

    @contextlib.contextmanager
    def seeded(self, seed: Optional[int]) -> Iterator[None]:
        """
        Run a block with numpy's global generator and the framework's global generator seeded with ``seed`` (left as
        they are when ``seed`` is None), and restore both afterwards: for library code that draws from global state
        (ART's PGD and ``fit``), so that a call is deterministic and the caller's random state is untouched.
        """
        np_state = np.random.get_state()
        fw_state = self._framework_rng_state()
        try:
            if seed is not None:
                np.random.seed(int(seed) % (2 ** 32))
                self._seed_framework(int(seed))
            yield
        finally:
            np.random.set_state(np_state)
            self._restore_framework_rng_state(fw_state)

    def _framework_rng_state(self):
        """The framework's global random state (None where the framework has none to save)."""
        return None

    def _seed_framework(self, seed: int) -> None:
        """Seed the framework's global generator."""

    def _restore_framework_rng_state(self, state) -> None:
        """Restore what :meth:`_framework_rng_state` returned."""

    def get_weights(self) -> List[np.ndarray]:
        """All model parameters as numpy arrays (for checking that the original model is untouched)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------- channel pruning
    def resolve_conv_layer(self, layer: Optional[str] = None) -> str:
        """Check a convolution layer's name (``None`` = the last convolution layer) and return it."""
        convs = self.conv_layer_names()
        if not convs:
            raise ValueError("The model has no 2-D convolution layer to prune.")
        if layer is None:
            return convs[-1]
        if layer not in convs:
            raise ValueError(f"layer must name a 2-D convolution layer, one of {convs}; got {layer!r}.")
        return layer

    def _channel_axis(self, layer: str) -> int:
        """Axis of the channels in ``layer``'s output (1 for NCHW, -1 for NHWC)."""
        raise NotImplementedError

    def nb_channels(self, layer: Optional[str] = None) -> int:
        """Number of output channels of a convolution layer (pruned channels included)."""
        raise NotImplementedError

    def channel_activations(self, x: np.ndarray, layer: Optional[str] = None, batch_size: int = 256,
                            relu: bool = True) -> np.ndarray:
        """
        Mean activation of every output channel of a convolution layer over ``x`` (and over the spatial positions),
        computed in batches without gradients; with ``relu`` the activation is measured after a ReLU (the output of the
        conv-ReLU pair, as fine-pruning ranks neurons).

        :return: Array ``(C,)``.
        """
        layer = self.resolve_conv_layer(layer)
        x = np.asarray(x, dtype=np.float32)
        if len(x) == 0:
            raise ValueError("channel_activations needs at least one image.")
        total = None
        for s in batches(len(x), batch_size):
            out = self._features_batch(x[s], layer)
            if relu:
                out = np.maximum(out, 0.0)
            out = np.moveaxis(out, self._channel_axis(layer), 1)
            part = out.reshape(out.shape[0], out.shape[1], -1).mean(axis=2).sum(axis=0)
            total = part if total is None else total + part
        return total / len(x)

    def prune_channels(self, layer: Optional[str], channels) -> None:
        """
        Prune output channels of a convolution layer in place with a persistent mask: their kernels and biases become
        zero and stay zero through further training and through the framework's save/load. Cumulative: channels
        pruned earlier stay pruned.
        """
        raise NotImplementedError

    def pruned_channels(self, layer: Optional[str] = None) -> List[int]:
        """The channels of a convolution layer currently masked by :meth:`prune_channels`."""
        raise NotImplementedError

    def channel_weight_norms(self, layer: Optional[str] = None) -> np.ndarray:
        """L1 norm of each output channel's effective kernel plus bias, shape ``(C,)`` (0 for a pruned channel)."""
        raise NotImplementedError

    @property
    def supports_channel_removal(self) -> bool:
        """Whether :meth:`remove_channels` can physically delete channels from this model."""
        return False

    def remove_channels(self, layer: Optional[str], channels):
        """
        A new ART classifier around a copy of the model with the channels physically deleted (the model gets
        narrower); the wrapped model is left untouched.
        """
        raise NotImplementedError(f"Physical channel removal is not available for {type(self.classifier).__name__}; "
                                  "use prune_channels (a persistent mask).")

    def set_learning_rate(self, learning_rate: float) -> None:
        """Set the learning rate of the classifier's optimizer (used by ``fit``)."""
        raise NotImplementedError

    def _warn_saturated_probabilities(self) -> None:
        """Log once per adapter that log-probabilities come from probabilities (no softmax layer to look through)."""
        if not getattr(self, "_warned_probabilities", False):
            self._warned_probabilities = True
            logger.warning("%s outputs probabilities and its softmax is not a separate output layer: class "
                           "log-probabilities are computed as log(max(p, 1e-12)), whose gradients vanish where p "
                           "saturates in float32. Return logits, or end the model in a softmax layer, for reliable "
                           "input gradients.", type(self.classifier).__name__)

    @staticmethod
    def _is_probability(out: np.ndarray) -> bool:
        return bool(np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))

    # ----------------------------------------------------------------------------------------------- weights on disk
    weights_suffix: str = ""
    """File name ending :meth:`save_weights` needs (``".pt"``, ``".keras"``)."""

    def save_weights(self, path: str) -> None:
        """
        Write the model's weights to ``path`` (ending in :attr:`weights_suffix`) in a format that loads without
        unpickling code (a PyTorch state dict, a Keras ``.keras`` file). Callers that need an atomic write pass a
        temporary path and rename it.
        """
        raise NotImplementedError(f"Saving weights is not available for {type(self.classifier).__name__}.")

    def load_weights(self, path: str) -> None:
        """
        Load weights written by :meth:`save_weights` into the wrapped model, in place, on the classifier's device. The
        model must have the same architecture; nothing in the file is unpickled (``torch.load(weights_only=True)``,
        Keras ``safe_mode=True``).
        """
        raise NotImplementedError(f"Loading weights is not available for {type(self.classifier).__name__}.")
