"""Keras / TensorFlow side of the framework adapter (``KerasClassifier`` with Keras 3, ``TensorFlowV2Classifier``)."""
from __future__ import annotations

import logging
from typing import List, Optional, Tuple

import numpy as np

from art_backdoor_ext.estimators.base import FrameworkAdapter

logger = logging.getLogger(__name__)


class KerasAdapter(FrameworkAdapter):
    """Adapter for ART's ``KerasClassifier`` and ``TensorFlowV2Classifier`` wrapping a Keras model."""

    framework = "keras"

    def __init__(self, classifier) -> None:
        super().__init__(classifier)
        self._submodels = {}

    @property
    def model(self):
        return self.classifier.model

    @property
    def layer_names(self) -> List[str]:
        return [layer.name for layer in self.model.layers if type(layer).__name__ != "InputLayer"]

    def conv_layer_names(self) -> List[str]:
        return [layer.name for layer in self.model.layers if type(layer).__name__ == "Conv2D"]

    def module(self, name: str):
        """The Keras layer called ``name``."""
        return self.model.get_layer(self.resolve_layer(name))

    def _declared_feature_layer(self) -> Optional[str]:
        names = self.layer_names
        return "feature" if "feature" in names else None

    def _preprocess(self, x: np.ndarray) -> np.ndarray:
        x_pre, _ = self.classifier._apply_preprocessing(x, y=None, fit=False)  # pylint: disable=protected-access
        return np.asarray(x_pre, dtype=np.float32)

    def _features_batch(self, x: np.ndarray, layer: str) -> np.ndarray:
        import keras

        if layer not in self._submodels:
            self._submodels[layer] = keras.Model(inputs=self.model.input, outputs=self.model.get_layer(layer).output)
        out = self._submodels[layer](self._preprocess(x), training=False)
        return np.asarray(out)

    def log_prob_and_grad(self, x: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        import tensorflow as tf

        x_t = tf.convert_to_tensor(self._preprocess(x))
        with tf.GradientTape() as tape:
            tape.watch(x_t)
            out = self.model(x_t, training=False)
            if self._is_probability(out.numpy()):
                logp = tf.math.log(tf.maximum(out, 1e-12))
            else:
                logp = tf.nn.log_softmax(out, axis=1)
            picked = tf.gather(logp, tf.convert_to_tensor(np.asarray(labels, np.int32)), axis=1, batch_dims=1)
            total = tf.reduce_sum(picked)
        grad = tape.gradient(total, x_t).numpy()
        grad = self.classifier._apply_preprocessing_gradient(x, grad)  # pylint: disable=protected-access
        return picked.numpy(), grad

    def clone(self, reset_weights: bool = False):
        import keras
        from art.estimators.classification import KerasClassifier

        clf = self.classifier
        model = keras.models.clone_model(self.model)
        model.build(self.model.input_shape)
        if not reset_weights:
            model.set_weights(self.model.get_weights())
        if getattr(self.model, "optimizer", None) is not None:
            optimizer = type(self.model.optimizer).from_config(self.model.optimizer.get_config())
            model.compile(optimizer=optimizer, loss=self.model.loss, metrics=["accuracy"])
        if isinstance(clf, KerasClassifier):
            return KerasClassifier(
                model=model,
                use_logits=clf._use_logits,  # pylint: disable=protected-access
                channels_first=clf.channels_first,
                clip_values=clf.clip_values,
                preprocessing_defences=clf.preprocessing_defences,
                postprocessing_defences=clf.postprocessing_defences,
                preprocessing=clf.preprocessing,
            )
        from art.estimators.classification import TensorFlowV2Classifier

        return TensorFlowV2Classifier(
            model=model,
            nb_classes=clf.nb_classes,
            input_shape=clf.input_shape,
            loss_object=clf.loss_object,
            optimizer=type(clf.optimizer).from_config(clf.optimizer.get_config()) if clf.optimizer else None,
            train_step=clf._train_step,  # pylint: disable=protected-access
            channels_first=clf.channels_first,
            clip_values=clf.clip_values,
            preprocessing_defences=clf.preprocessing_defences,
            postprocessing_defences=clf.postprocessing_defences,
            preprocessing=clf.preprocessing,
        )

    def get_weights(self) -> List[np.ndarray]:
        return [np.array(w, copy=True) for w in self.model.get_weights()]
