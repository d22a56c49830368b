"""The framework-neutral interface every adapter implements."""
from __future__ import annotations

import abc
import logging
from typing import List, Optional, Tuple

import numpy as np

from art_backdoor_ext.utils import batches, to_labels

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
        return np.argmax(self.classifier.predict(np.asarray(x, np.float32), batch_size=batch_size), axis=1)

    @abc.abstractmethod
    def log_prob_and_grad(self, x: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """
        For one batch: ``log p_label(x)`` (shape ``(N,)``) and its gradient with respect to ``x`` (shape of ``x``),
        in one forward/backward pass. Model outputs are treated as logits unless they already are probabilities.
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

    def get_weights(self) -> List[np.ndarray]:
        """All model parameters as numpy arrays (for checking that the original model is untouched)."""
        raise NotImplementedError

    @staticmethod
    def _is_probability(out: np.ndarray) -> bool:
        return bool(np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
