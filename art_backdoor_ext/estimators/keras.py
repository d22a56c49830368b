"""Keras / TensorFlow side of the framework adapter (``KerasClassifier`` with Keras 3, ``TensorFlowV2Classifier``)."""
from __future__ import annotations

import logging
from typing import Any, List, Optional, Tuple

import numpy as np

from art_backdoor_ext.estimators.base import FrameworkAdapter
from art_backdoor_ext.utils import to_labels

logger = logging.getLogger(__name__)


class KerasAdapter(FrameworkAdapter):
    """Adapter for ART's ``KerasClassifier`` and ``TensorFlowV2Classifier`` wrapping a Keras model."""

    framework = "keras"

    def __init__(self, classifier) -> None:
        super().__init__(classifier)
        self._submodels = {}
        self._final_softmax: Any = False  # not looked up yet

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
        from art_backdoor_ext.estimators.keras_pruning import keras_module_of

        keras = keras_module_of(self.model)  # Keras 3, or tf_keras for tf.keras models (TF_USE_LEGACY_KERAS=1)
        if layer not in self._submodels:
            self._submodels[layer] = keras.Model(inputs=self.model.input, outputs=self.model.get_layer(layer).output)
        out = self._submodels[layer](self._preprocess(x), training=False)
        return np.asarray(out)

    def log_prob_and_grad(self, x: np.ndarray, labels: np.ndarray,
                          complement: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        import tensorflow as tf

        x_t = tf.convert_to_tensor(self._preprocess(x))
        with tf.GradientTape() as tape:
            tape.watch(x_t)
            logp = self._log_probs(x_t)
            picked = tf.gather(logp, tf.convert_to_tensor(np.asarray(labels, np.int32)), axis=1, batch_dims=1)
            if complement is not None and np.any(complement):
                # log(1 - p_label) as the log-sum of the other classes' probabilities (stable when p_label -> 1)
                onehot = tf.one_hot(np.asarray(labels, np.int32), int(logp.shape[1])) > 0
                other = tf.reduce_logsumexp(tf.where(onehot, tf.fill(tf.shape(logp), -1e30), logp), axis=1)
                picked = tf.where(tf.convert_to_tensor(np.asarray(complement, bool)), other, picked)
            total = tf.reduce_sum(picked)
        grad = tape.gradient(total, x_t).numpy()
        grad = self.classifier._apply_preprocessing_gradient(x, grad)  # pylint: disable=protected-access
        return picked.numpy(), grad

    def final_softmax(self):
        """
        ``(pre_model, dense)`` when the model's output layer is a softmax over the last axis of a 2-D output, else
        ``None``: ``pre_model`` maps the input to that layer's input; ``dense`` is the output layer when it is a
        ``Dense(..., activation="softmax")`` (its logits are ``pre @ kernel + bias``), ``None`` for a ``Softmax`` or
        ``Activation("softmax")`` layer (its input is the logits).
        """
        if self._final_softmax is not False:
            return self._final_softmax
        found = None
        try:
            found = self._find_final_softmax()
        except (AttributeError, ValueError, TypeError, IndexError) as err:  # unusual graphs: fall back to the output
            logger.debug("No separable final softmax found: %s", err)
        self._final_softmax = found
        return found

    def _find_final_softmax(self):
        from art_backdoor_ext.estimators.keras_pruning import keras_module_of

        keras = keras_module_of(self.model)
        outputs = self.model.outputs
        if len(outputs) != 1 or len(outputs[0].shape) != 2:
            return None
        last = self.model.layers[-1]
        if last.output is not outputs[0]:
            return None
        kind = type(last).__name__
        activation = getattr(getattr(last, "activation", None), "__name__", "")
        if kind == "Softmax" and getattr(last, "axis", -1) in (-1, 1):
            dense = None
        elif kind == "Activation" and activation == "softmax":
            dense = None
        elif kind == "Dense" and activation == "softmax":
            dense = last
        else:
            return None
        return keras.Model(inputs=self.model.inputs, outputs=last.input), dense

    def _log_probs(self, x_t):
        """
        Class log-probabilities ``(N, K)``, differentiable with respect to ``x_t`` (called inside a gradient tape).

        A model whose output layer is a softmax gives ``log_softmax`` of the logits that feed it, so gradients never
        pass through saturated float32 probabilities; other models' outputs are logits, or probabilities that cannot
        be undone (logged once: their log-probabilities come from ``log(max(p, 1e-12))``).
        """
        import tensorflow as tf

        final = self.final_softmax()
        if final is not None:
            pre_model, dense = final
            logits = pre_model(x_t, training=False)
            if dense is not None:
                logits = self._dense_logits(dense, logits)
            return tf.nn.log_softmax(logits, axis=1)
        out = self.model(x_t, training=False)
        if self._is_probability(out.numpy()):
            self._warn_saturated_probabilities()
            return tf.math.log(tf.maximum(out, 1e-12))
        return tf.nn.log_softmax(out, axis=1)

    @staticmethod
    def _dense_logits(dense, inputs):
        """The logits of a ``Dense(..., activation="softmax")`` layer: its affine part, without the softmax."""
        import tensorflow as tf

        logits = tf.matmul(inputs, dense.kernel)
        return logits + dense.bias if dense.use_bias else logits

    def clone(self, reset_weights: bool = False):
        import random

        from art_backdoor_ext.estimators.keras_pruning import keras_module_of

        keras = keras_module_of(self.model)
        # Keras draws the clone's initial-weight seeds from Python's global generator: keep the caller's state
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            model = keras.models.clone_model(self.model)
            model.build(self.model.input_shape)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        if not reset_weights:
            model.set_weights(self.model.get_weights())
        return self.wrap_model(model)

    def wrap_model(self, model):
        """A new ART classifier like this one (same wrapper type and settings, fresh optimizer) around ``model``."""
        from art.estimators.classification import KerasClassifier

        clf = self.classifier
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

    def _framework_rng_state(self):
        import random

        return random.getstate()

    def _seed_framework(self, seed: int) -> None:
        """
        ``keras.utils.set_random_seed``: Python's, numpy's and the backend's generators (Keras's ``fit`` shuffles and
        its dropout draws from them). Python's and numpy's states are restored afterwards; TensorFlow's global seed
        cannot be read back, so it stays set to ``seed``.
        """
        from art_backdoor_ext.estimators.keras_pruning import keras_module_of

        keras_module_of(self.model).utils.set_random_seed(seed)

    def _restore_framework_rng_state(self, state) -> None:
        import random

        random.setstate(state)

    # ----------------------------------------------------------------------------------------------- channel pruning
    def _channel_axis(self, layer: str) -> int:
        return 1 if getattr(self.model.get_layer(layer), "data_format", "channels_last") == "channels_first" else -1

    def nb_channels(self, layer: Optional[str] = None) -> int:
        return int(self.model.get_layer(self.resolve_conv_layer(layer)).filters)

    def prune_channels(self, layer: Optional[str], channels) -> None:
        """
        Persistent mask: the channels' kernels and biases are zeroed and a registered ``ChannelMask`` constraint
        (:mod:`art_backdoor_ext.estimators.keras_pruning`) keeps them zero after every optimizer step; the mask is part
        of the layer config, so it survives ``model.save`` / ``keras.models.load_model`` (import
        ``art_backdoor_ext.estimators.keras_pruning`` before loading) and ``clone_model``.
        """
        from art_backdoor_ext.estimators.keras_pruning import mask_channels

        conv = self.model.get_layer(self.resolve_conv_layer(layer))
        idx = np.unique(np.asarray(list(channels), dtype=np.int64))
        if idx.size and (idx.min() < 0 or idx.max() >= conv.filters):
            raise ValueError(f"Channel indices must lie in [0, {conv.filters}); got {idx.min()}..{idx.max()}.")
        if idx.size:
            mask_channels(conv, idx.tolist())

    def pruned_channels(self, layer: Optional[str] = None) -> List[int]:
        from art_backdoor_ext.estimators.keras_pruning import masked_channels

        return masked_channels(self.model.get_layer(self.resolve_conv_layer(layer)))

    def channel_weight_norms(self, layer: Optional[str] = None) -> np.ndarray:
        conv = self.model.get_layer(self.resolve_conv_layer(layer))
        kernel = np.asarray(conv.kernel)
        norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
        if getattr(conv, "use_bias", False) and conv.bias is not None:
            norms = norms + np.abs(np.asarray(conv.bias))
        return norms

    @property
    def supports_channel_removal(self) -> bool:
        from art_backdoor_ext.estimators.keras_pruning import is_legacy_model

        if not is_legacy_model(self.model):
            return False
        try:
            import kerassurgeon  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
        except ImportError:
            return False
        return True

    def remove_channels(self, layer: Optional[str], channels):
        """
        Physically delete channels with keras-surgeon (tf.keras models under ``TF_USE_LEGACY_KERAS=1`` only; see
        :func:`art_backdoor_ext.estimators.keras_pruning.delete_channels`) and wrap the narrower model like this
        classifier. The wrapped model is untouched.
        """
        from art_backdoor_ext.estimators.keras_pruning import delete_channels

        layer = self.resolve_conv_layer(layer)
        idx = np.unique(np.asarray(list(channels), dtype=np.int64))
        nb = self.nb_channels(layer)
        if idx.size and (idx.min() < 0 or idx.max() >= nb):
            raise ValueError(f"Channel indices must lie in [0, {nb}); got {idx.min()}..{idx.max()}.")
        if idx.size >= nb:
            raise ValueError(f"Cannot delete all {nb} channels of {layer!r}.")
        model = delete_channels(self.model, layer, idx.tolist()) if idx.size else None
        if model is None:
            return self.clone()
        return self.wrap_model(model)

    def art_neural_cleanse_classifier(self):
        from art.estimators.classification import KerasClassifier

        from art_backdoor_ext.estimators.keras_pruning import keras_module_of

        model = self.model
        if self.final_softmax() is None:  # logits: the same layers (shared weights) with a softmax on top
            keras = keras_module_of(model)
            model = keras.Model(model.inputs, keras.layers.Softmax(name="probabilities")(model.outputs[0]),
                                name=model.name + "_softmax")
        return KerasClassifier(model=model, use_logits=False, clip_values=self.classifier.clip_values,
                               channels_first=self.classifier.channels_first,
                               preprocessing=self.classifier.preprocessing)

    def _output_layer(self):
        """The last layer with a ``kernel`` and a ``kernel_initializer`` (the ``Dense`` head)."""
        head = None
        for layer in self.model.layers:
            if getattr(layer, "kernel", None) is not None and getattr(layer, "kernel_initializer", None) is not None:
                head = layer
        if head is None:
            raise ValueError(f"{type(self.model).__name__} has no layer with a kernel (no output layer).")
        return head

    def fit_output_layer(self, x: np.ndarray, y: np.ndarray, nb_epochs: int, learning_rate: float = 1e-2,
                         batch_size: int = 64, seed: Optional[int] = None) -> str:
        import tensorflow as tf

        from art_backdoor_ext.estimators.keras_pruning import keras_module_of

        keras = keras_module_of(self.model)
        head = self._output_layer()
        pre = keras.Model(inputs=self.model.input, outputs=head.input)
        feats = np.concatenate([np.asarray(pre(self._preprocess(x[i:i + 256]), training=False))
                                for i in range(0, len(x), 256)])
        softmax_head = getattr(getattr(head, "activation", None), "__name__", "") == "softmax"

        def logits_of(f):
            return self._dense_logits(head, f) if softmax_head else head(f, training=False)

        out = np.asarray(self.model(self._preprocess(x[:8]), training=False))
        first = np.asarray(logits_of(tf.constant(feats[:8])))
        probs = np.exp(first - first.max(axis=1, keepdims=True))
        if not (np.allclose(out, first, atol=1e-5) or np.allclose(out, probs / probs.sum(axis=1, keepdims=True),
                                                                  atol=1e-5)):
            raise ValueError(f"The last layer with a kernel ({head.name!r}) is not the model's output (up to a "
                             "softmax); fit_output_layer cannot retrain it alone.")
        labels = to_labels(y, self.nb_classes)
        optimizer = keras.optimizers.Adam(learning_rate=float(learning_rate))
        weights = head.trainable_weights

        @tf.function
        def step(f, t):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=t, logits=logits_of(f)))
            optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))

        order = np.random.default_rng(seed)
        for _ in range(int(nb_epochs)):
            perm = order.permutation(len(feats))
            for i in range(0, len(perm), int(batch_size)):
                idx = perm[i:i + int(batch_size)]
                step(tf.constant(feats[idx]), tf.constant(labels[idx], dtype=tf.int32))
        return head.name

    def reset_output_layer(self, seed: Optional[int] = None) -> str:
        """The last layer with a ``kernel`` (a ``Dense`` head) gets fresh weights from its own kernel and bias
        initializers, re-created with ``seed`` in their configuration (Keras initializers without a seed would draw
        from the backend's global generator)."""
        head = self._output_layer()
        for name in ("kernel", "bias"):
            variable = getattr(head, name, None)
            init = getattr(head, name + "_initializer", None)
            if variable is None or init is None:
                continue
            config = init.get_config()
            if "seed" in config:
                config["seed"] = None if seed is None else int(seed) % (2 ** 31)
            fresh = type(init).from_config(config)
            variable.assign(np.asarray(fresh(tuple(variable.shape), dtype=variable.dtype)))
        return head.name

    def _optimizer(self):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            optimizer = getattr(self.classifier, "optimizer", None)
        if optimizer is None:
            raise ValueError("The classifier has no optimizer; compile the Keras model (or give TensorFlowV2Classifier "
                             "an optimizer) to fine-tune it.")
        return optimizer

    def get_learning_rate(self) -> float:
        rate = self._optimizer().learning_rate
        if callable(rate) and not hasattr(rate, "numpy"):  # a LearningRateSchedule: its rate at step 0
            rate = rate(0)
        return float(np.asarray(rate))

    def set_learning_rate(self, learning_rate: float) -> None:
        optimizer = self._optimizer()
        try:
            optimizer.learning_rate = float(learning_rate)
        except (AttributeError, TypeError, ValueError):
            optimizer.learning_rate.assign(float(learning_rate))

    # ----------------------------------------------------------------------------------------------- weights on disk
    weights_suffix = ".keras"

    def save_weights(self, path: str) -> None:
        """The model as a ``.keras`` archive (architecture config and weights; no pickled code)."""
        self.model.save(path)

    def load_weights(self, path: str) -> None:
        """
        Read a ``.keras`` archive with ``load_model(safe_mode=True, compile=False)`` (no lambda or pickled code is
        deserialised, the loss is not rebuilt) and copy its weights into the wrapped model, which keeps its optimizer.
        """
        from art_backdoor_ext.estimators.keras_pruning import keras_module_of

        keras = keras_module_of(self.model)
        loaded = keras.models.load_model(path, safe_mode=True, compile=False)
        self.model.set_weights(loaded.get_weights())

    # ------------------------------------------------------------------------------------------ adversarial embedding
    def _embedding_session(self, layer: str, dim: int, learning_rate: float, learning_rate_d: float, seed: int,
                           objective: str = "paper"):
        return _KerasEmbeddingSession(self, layer, dim, learning_rate, learning_rate_d, seed, objective)


    def _channel_suppression_step(self, layer: str, weight: np.ndarray, learning_rate: float):
        import tensorflow as tf

        from art_backdoor_ext.estimators.keras_pruning import keras_module_of

        keras = keras_module_of(self.model)
        both = keras.Model(inputs=self.model.inputs, outputs=[self.model.get_layer(layer).output,
                                                               self.model.outputs[0]])
        opt = keras.optimizers.Adam(learning_rate)
        shape = [1, 1, 1, 1]
        shape[self._channel_axis(layer)] = -1
        w = tf.constant(np.asarray(weight, np.float32).reshape(shape))
        probability = {}

        @tf.function(reduce_retracing=True)
        def train(x, labels, lam, is_probability):
            with tf.GradientTape() as tape:
                z, out = both(x, training=True)
                z = tf.nn.relu(z)
                mse = tf.reduce_mean(tf.square(z - tf.stop_gradient(z) * w))
                logp = tf.math.log(tf.maximum(out, 1e-12)) if is_probability else tf.nn.log_softmax(out, axis=1)
                ce = -tf.reduce_mean(tf.gather(logp, labels, axis=1, batch_dims=1))
                loss = ce + lam * mse
            variables = self.model.trainable_variables
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return ce, mse, loss

        def step(x, labels, lam):
            x = self._preprocess(x)
            if "p" not in probability:
                probability["p"] = self._is_probability(np.asarray(self.model(x[:8], training=False)))
            out = train(tf.constant(x), tf.constant(np.asarray(labels, np.int32)), tf.constant(lam, tf.float32),
                        probability["p"])
            return np.array([float(v) for v in out])

        return step


class _KerasEmbeddingSession:
    """One adversarial-embedding game on a Keras 3 model (see ``FrameworkAdapter.train_adversarial_embedding``)."""

    def __init__(self, adapter: KerasAdapter, layer: str, dim: int, learning_rate: float, learning_rate_d: float,
                 seed: int, objective: str = "paper") -> None:
        import tensorflow as tf

        from art_backdoor_ext.estimators.keras_pruning import keras_module_of

        keras = keras_module_of(adapter.model)
        layers = keras.layers
        self.adapter = adapter
        self.model = adapter.model
        self.objective = objective
        self.both = keras.Model(inputs=self.model.inputs, outputs=[self.model.get_layer(layer).output,
                                                                    self.model.outputs[0]])
        init = [keras.initializers.GlorotUniform(seed=int(seed) + i) for i in range(3)]  # seeded locally
        self.d = keras.Sequential([
            keras.Input((dim,)),
            layers.Dense(256, kernel_initializer=init[0]), layers.LeakyReLU(0.2), layers.BatchNormalization(),
            layers.Dense(128, kernel_initializer=init[1]), layers.LeakyReLU(0.2), layers.BatchNormalization(),
            layers.Dense(1, kernel_initializer=init[2]),
        ])
        self.opt = keras.optimizers.Adam(learning_rate)
        self.opt_d = keras.optimizers.Adam(learning_rate_d)
        self._probability = None
        self._step = tf.function(self._step_impl, reduce_retracing=True)

    @staticmethod
    def _mmd2(a, b):
        """Squared MMD of two latent batches, Gaussian kernels at 1/4, 1, 4 x the median squared distance."""
        import tensorflow as tf

        z = tf.concat([a, b], axis=0)
        sq = tf.reduce_sum(z * z, axis=1)
        d2 = tf.maximum(sq[:, None] + sq[None, :] - 2.0 * tf.matmul(z, z, transpose_b=True), 0.0)
        flat = tf.sort(tf.reshape(tf.stop_gradient(d2), [-1]))
        med = tf.maximum(flat[tf.size(flat) // 2], 1e-6)
        k = tf.add_n([tf.exp(-d2 / (scale * med)) for scale in (0.25, 1.0, 4.0)])
        n = tf.shape(a)[0]
        return (tf.reduce_mean(k[:n, :n]) + tf.reduce_mean(k[n:, n:]) - 2.0 * tf.reduce_mean(k[:n, n:]))

    def _step_impl(self, x_ce, y_all, x_d, b_d, noise, lam, probability, mmd):
        import tensorflow as tf

        n = tf.shape(x_ce)[0]
        b = b_d[:, None]
        x_all = tf.concat([x_ce, x_d], axis=0)
        with tf.GradientTape() as tape:
            feats, out = self.both(x_all, training=True)
            feats = tf.reshape(feats, (tf.shape(x_all)[0], -1))
            f_d = feats[n:]
            d_losses, d_accs = [], []
            with tape.stop_recording():  # D's turn: minimise L_D on the detached latents
                f_fixed = tf.stop_gradient(f_d)
                for k in range(noise.shape[0] - 1):
                    with tf.GradientTape() as tape_d:
                        logits_d = self.d(f_fixed + noise[k], training=True)
                        loss_d = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(b, logits_d))
                    grads = tape_d.gradient(loss_d, self.d.trainable_variables)
                    self.opt_d.apply_gradients(zip(grads, self.d.trainable_variables))
                    d_losses.append(loss_d)
                    d_accs.append(tf.reduce_mean(tf.cast(tf.equal(tf.cast(logits_d > 0, tf.float32), b),
                                                         tf.float32)))
            logits_adv = self.d(f_d + noise[-1], training=True)  # the classifier's turn: D's weights not updated
            adv = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(b, logits_adv))
            if probability:
                logp = tf.math.log(tf.maximum(out, 1e-12))
            else:
                logp = tf.nn.log_softmax(out, axis=1)
            ce = -tf.reduce_mean(tf.gather(logp, y_all, axis=1, batch_dims=1))
            if self.objective == "confusion":  # push D's output to 1/2 on every latent
                loss = ce + lam * tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(0.5 + 0.0 * b, logits_adv))
            elif self.objective == "flip":  # make the poisoned latents look clean to D (non-saturating)
                flip = tf.nn.sigmoid_cross_entropy_with_logits(0.0 * b, logits_adv)
                loss = ce + lam * tf.reduce_sum(flip * b) / tf.maximum(tf.reduce_sum(b), 1.0)
            else:
                loss = ce - lam * adv
            poisoned = b_d > 0.5  # the game's batch: poisoned latents first, then the (fixed) reference latents
            loss = loss + mmd * self._mmd2(tf.boolean_mask(f_d, poisoned),
                                           tf.stop_gradient(tf.boolean_mask(f_d, tf.logical_not(poisoned))))
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, variables)
        self.opt.apply_gradients(zip(grads, variables))
        return ce, tf.reduce_mean(tf.stack(d_losses)), adv, tf.reduce_mean(tf.stack(d_accs)), loss

    def step(self, x_ce, y_ce, x_d, y_d, b_d, noise, lam, mmd=0.0):
        import tensorflow as tf

        x_ce = self.adapter._preprocess(x_ce)  # pylint: disable=protected-access
        x_d = self.adapter._preprocess(x_d)  # pylint: disable=protected-access
        if self._probability is None:
            self._probability = self.adapter._is_probability(  # pylint: disable=protected-access
                np.asarray(self.model(x_ce[:8], training=False)))
        y_all = np.concatenate([y_ce, y_d]).astype(np.int32)
        out = self._step(tf.constant(x_ce), tf.constant(y_all), tf.constant(x_d),
                         tf.constant(b_d), tf.constant(noise), tf.constant(float(lam), tf.float32), self._probability,
                         tf.constant(float(mmd), tf.float32))
        return np.array([float(v) for v in out])

    def predict(self, features: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        logits = self.d(tf.constant(np.asarray(features, np.float32)), training=False)
        return tf.sigmoid(logits).numpy()[:, 0]
