"""The framework-neutral interface every adapter implements."""
from __future__ import annotations

import abc
import contextlib
import logging
from typing import Dict, Iterator, List, Optional, Tuple

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
            elif x.ndim == 3 and len(expected) == 3 and 1 in (expected[0], expected[2]):
                if tuple(x.shape[1:]) == tuple(expected[1:]) and expected[0] == 1:
                    msg += "; your batch has no channel axis: add it with x[:, np.newaxis]"
                elif tuple(x.shape[1:]) == tuple(expected[:2]) and expected[2] == 1:
                    msg += "; your batch has no channel axis: add it with x[..., np.newaxis]"
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

    def art_neural_cleanse_classifier(self):
        """
        The classifier as ART's ``NeuralCleanse`` transformer takes it: an ART ``KerasClassifier`` whose model outputs
        probabilities (ART builds ``KerasNeuralCleanse`` with ``use_logits=False``). ART's Neural Cleanse exists only
        for Keras classifiers, so other frameworks raise a ``ValueError``.
        """
        raise ValueError(f"ART's NeuralCleanse supports only Keras classifiers, not {type(self.classifier).__name__}; "
                         "use art_backdoor_ext's NeuralCleanseDefence (the 'nc' row) for this framework.")

    def reset_output_layer(self, seed: Optional[int] = None) -> str:
        """
        Re-initialise, in place, the weights of the model's last layer with weights (the classifier head: the final
        dense layer) with that layer's own initializer, drawn with ``seed``; the caller's random state is untouched.
        Returns the layer's name.
        """
        raise NotImplementedError(f"Re-initialising the output layer is not available for "
                                  f"{type(self.classifier).__name__}.")

    def fit_output_layer(self, x: np.ndarray, y: np.ndarray, nb_epochs: int, learning_rate: float = 1e-2,
                         batch_size: int = 64, seed: Optional[int] = None) -> str:
        """
        Retrain, in place, only the output layer (the layer :meth:`reset_output_layer` resets) with cross-entropy and
        a fresh Adam optimiser, every other weight frozen. The output layer's inputs are computed once, in inference
        mode, so nothing before it changes (batch-norm statistics included) and the latent features stay exactly what
        they were. ``seed`` orders the batches. Returns the layer's name; ``ValueError`` when the output layer is not
        the model's last operation (up to a final softmax).
        """
        raise NotImplementedError(f"Retraining the output layer is not available for {type(self.classifier).__name__}.")

    def set_learning_rate(self, learning_rate: float) -> None:
        """Set the learning rate of the classifier's optimizer (used by ``fit``)."""
        raise NotImplementedError

    def get_learning_rate(self) -> float:
        """The learning rate the classifier's optimizer is configured with (``ValueError`` without an optimizer)."""
        raise NotImplementedError

    def fit_annealed(self, x: np.ndarray, y: np.ndarray, learning_rate: float, nb_epochs: int, batch_size: int = 64,
                     final_fraction: float = 0.01, verbose: bool = False) -> List[float]:
        """
        Train in place for ``nb_epochs`` epochs with the learning rate decayed per epoch along a half cosine from
        ``learning_rate`` to ``final_fraction * learning_rate`` (Loshchilov and Hutter's SGDR schedule, one cycle).
        Returns the rate used at each epoch. The optimizer keeps the last rate afterwards.
        """
        decay = 0.5 * (1 + np.cos(np.pi * np.arange(nb_epochs) / max(nb_epochs, 1)))
        rates = [float(learning_rate) * (final_fraction + (1 - final_fraction) * d) for d in decay]
        for rate in rates:
            self.set_learning_rate(rate)
            self.fit(x, y, nb_epochs=1, batch_size=batch_size, verbose=verbose)
        return rates

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

    # ------------------------------------------------------------------------------------------ adversarial embedding
    def train_adversarial_embedding(self, x: np.ndarray, y: np.ndarray, is_poison: np.ndarray,
                                    reference: np.ndarray, layer: Optional[str] = None, lam: float = 1.0,
                                    nb_epochs: int = 5, batch_size: int = 64, learning_rate: float = 1e-4,
                                    learning_rate_d: float = 1e-3, d_steps: int = 1, noise_sigma: float = 0.1,
                                    noise_decay: float = 10.0, seed: int = 0, objective: str = "paper",
                                    mmd: float = 0.0,
                                    validation: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                                    verbose: bool = False) -> Dict[str, List[float]]:
        """
        Tan & Shokri's adversarial embedding game (https://arxiv.org/abs/1905.13409, Eq. 5-6), training the wrapped
        model **in place** (callers clone first). A discriminator ``D`` (FC 256 -> FC 128 -> 1, LeakyReLU 0.2 and batch
        norm after each hidden layer) reads the flattened activations of ``layer`` and learns to tell poisoned images
        (``is_poison``) from clean reference images (``reference``). Every step alternates the two players on one
        mini-batch: ``d_steps`` updates of ``D`` on its binary cross-entropy (``L_D``, Eq. 6) with Gaussian noise of
        standard deviation ``sigma`` added to its input, then one update of the classifier on ``CE - lam * L_D`` (Eq. 5)
        with ``D`` frozen. With ``objective="confusion"`` the classifier minimises ``CE + lam * BCE(D(H(x)), 1/2)``
        instead, pulling ``D``'s output to 1/2 on the game's images (bounded, and its gradient does not vanish when
        ``D`` is confidently right, unlike ``-L_D``'s); with ``objective="flip"``, ``CE + lam * BCE(D(H(x_b)), 0)`` on
        the poisoned images only (the non-saturating GAN generator loss). ``sigma`` starts at ``noise_sigma`` and is
        divided by ``noise_decay`` each epoch. ``mmd > 0`` adds ``mmd * MMD^2`` to the classifier's objective: the
        squared maximum mean discrepancy (Gretton et al., https://jmlr.org/papers/v13/gretton12a.html; Gaussian
        kernels at 1/4, 1 and 4 times the batch's median squared distance) between the poisoned latents of the game's
        batch and the reference latents, the latter held constant, so that only the poisoned latents move toward the
        clean ones' distribution.

        A step draws ``batch_size`` images of the whole set for the cross-entropy and, for the game, ``batch_size // 2``
        poisoned plus ``batch_size // 2`` reference images (with replacement): balanced, since poison is a small
        fraction. One forward pass of the model serves both players, and the cross-entropy covers the game's images too
        (with their training labels), so the backdoor is trained on as many poisoned images as the adversarial term
        pulls on: without that the adversarial term erodes the backdoor. An epoch is ``len(x) // batch_size`` steps; the
        classifier gets a fresh Adam optimiser (``learning_rate``), ``D`` another (``learning_rate_d``). Random draws
        come from a local generator seeded with ``seed``; ``D``'s initial weights are seeded too.

        :param x: Training images (poisoned ones included), the classifier's layout.
        :param y: Integer labels.
        :param is_poison: Boolean mask of the poisoned images (``D``'s positives).
        :param reference: Boolean mask of the clean images ``D`` compares them with (its negatives).
        :param validation: Optional ``(x_val, is_poison_val)``: ``D``'s balanced accuracy on these held-out images'
                           latents is recorded after each epoch (``val_d_acc``).
        :return: Per-epoch history: ``ce``, ``d_loss`` (``D``'s own BCE), ``adv`` (``L_D`` in the classifier's step),
                 ``loss`` (the classifier's objective), ``d_acc`` (``D``'s training accuracy), ``val_d_acc``, ``sigma``,
                 ``seconds``.
        """
        import time

        layer = self.resolve_layer(layer)
        x = np.asarray(x, np.float32)
        labels = to_labels(y, self.nb_classes)
        pos = np.flatnonzero(np.asarray(is_poison, bool))
        neg = np.flatnonzero(np.asarray(reference, bool) & ~np.asarray(is_poison, bool))
        if len(pos) == 0 or len(neg) == 0:
            raise ValueError("The embedding game needs at least one poisoned and one clean reference image.")
        if len(x) < batch_size:
            raise ValueError(f"batch_size ({batch_size}) exceeds the {len(x)} training images.")
        rng = np.random.default_rng(seed)
        dim = int(self.get_features(x[:1], layer).shape[1])
        if objective not in ("paper", "confusion", "flip"):
            raise ValueError(f"objective must be 'paper', 'confusion' or 'flip', got {objective!r}.")
        session = self._embedding_session(layer, dim, learning_rate, learning_rate_d, seed, objective)
        half = max(1, batch_size // 2)
        b_d = np.concatenate([np.ones(half, np.float32), np.zeros(half, np.float32)])
        history: Dict[str, List[float]] = {k: [] for k in
                                           ("ce", "d_loss", "adv", "loss", "d_acc", "val_d_acc", "sigma", "seconds")}
        steps = len(x) // batch_size
        sigma = float(noise_sigma)
        for epoch in range(int(nb_epochs)):
            start = time.perf_counter()
            order = rng.permutation(len(x))
            sums = np.zeros(5)
            for s in range(steps):
                idx = order[s * batch_size:(s + 1) * batch_size]
                d_idx = np.concatenate([rng.choice(pos, half), rng.choice(neg, half)])
                noise = (rng.standard_normal((int(d_steps) + 1, 2 * half, dim)) * sigma).astype(np.float32)
                sums += session.step(x[idx], labels[idx], x[d_idx], labels[d_idx], b_d, noise, float(lam), float(mmd))
            ce, d_loss, adv, d_acc, loss = sums / max(steps, 1)
            history["ce"].append(float(ce))
            history["d_loss"].append(float(d_loss))
            history["adv"].append(float(adv))
            history["loss"].append(float(loss))
            history["d_acc"].append(float(d_acc))
            history["sigma"].append(sigma)
            val = float("nan")
            if validation is not None:
                val = self._discriminator_accuracy(session, validation[0], validation[1], layer)
            history["val_d_acc"].append(val)
            history["seconds"].append(time.perf_counter() - start)
            logger.info("Embedding epoch %d: CE %.4f, L_D %.4f (D acc %.3f, held-out %.3f), sigma %.0e, %.1fs.",
                        epoch + 1, ce, d_loss, d_acc, val, sigma, history["seconds"][-1])
            sigma /= float(noise_decay)
        self.discriminator_ = session
        return history

    def train_channel_suppression(self, x: np.ndarray, y: np.ndarray, layer: str, channels, scale: float = 1e-5,
                                  lam: float = 1.0, nb_epochs: int = 5, batch_size: int = 64,
                                  learning_rate: float = 1e-3, seed: int = 0) -> Dict[str, List[float]]:
        """
        Tan & Shokri's targeted embedding step (https://arxiv.org/abs/1905.13409, Section 3.1, Eq. 4), training the
        wrapped model **in place** (callers clone first): minimise ``CE + lam * MSE(z, z_target)`` where ``z`` is the
        ReLU'd output of the convolution layer ``layer`` and ``z_target`` is ``z`` (held constant) with the channels
        ``channels`` (``N_b``, the neurons a pruning defence removes) multiplied by ``scale`` (``k``). The penalty
        pushes those channels towards zero on every training image, poisoned ones included, so the backdoor has to
        live in the channels pruning keeps. ``MSE`` averages over every element of the layer's output, as in the paper.

        The classifier gets a fresh Adam optimiser (``learning_rate``); batches are drawn from a local generator
        seeded with ``seed``. An epoch is ``ceil(len(x) / batch_size)`` steps.

        :return: Per-epoch history: ``ce``, ``mse``, ``loss``, ``nb_activation`` (mean ReLU activation of ``N_b``'s
                 channels), ``seconds``.
        """
        import time

        layer = self.resolve_conv_layer(layer)
        idx = np.unique(np.asarray(list(channels), dtype=np.int64))
        nb = self.nb_channels(layer)
        if idx.size == 0:
            raise ValueError("channels is empty: the targeted embedding needs the channels a pruning defence removes.")
        if idx.min() < 0 or idx.max() >= nb:
            raise ValueError(f"channels must lie in [0, {nb}) for layer {layer!r}; got {idx.min()}..{idx.max()}.")
        x = np.asarray(x, np.float32)
        labels = to_labels(y, self.nb_classes)
        weight = np.ones(nb, np.float32)
        weight[idx] = float(scale)
        step = self._channel_suppression_step(layer, weight, float(learning_rate))
        rng = np.random.default_rng(seed)
        history: Dict[str, List[float]] = {k: [] for k in ("ce", "mse", "loss", "nb_activation", "seconds")}
        for epoch in range(int(nb_epochs)):
            start = time.perf_counter()
            order = rng.permutation(len(x))
            sums, count = np.zeros(3), 0
            for s in batches(len(x), batch_size):
                sums += step(x[order[s]], labels[order[s]], float(lam))
                count += 1
            ce, mse, loss = sums / max(count, 1)
            history["ce"].append(float(ce))
            history["mse"].append(float(mse))
            history["loss"].append(float(loss))
            history["nb_activation"].append(float(self.channel_activations(x[:512], layer)[idx].mean()))
            history["seconds"].append(time.perf_counter() - start)
            logger.info("Targeted embedding epoch %d: CE %.4f, MSE %.2e, N_b activation %.4f, %.1fs.", epoch + 1, ce,
                        mse, history["nb_activation"][-1], history["seconds"][-1])
        return history

    def _channel_suppression_step(self, layer: str, weight: np.ndarray, learning_rate: float):
        """
        The framework's half of :meth:`train_channel_suppression`: a function ``(x, labels, lam) -> (ce, mse, loss)``
        doing one optimiser step on ``CE + lam * MSE(relu(z), stop_gradient(relu(z)) * weight)``, with ``weight``
        broadcast over the channel axis.
        """
        raise NotImplementedError(f"Targeted embedding is not implemented for {type(self).__name__}.")

    def _discriminator_accuracy(self, session, x: np.ndarray, is_poison: np.ndarray, layer: str) -> float:
        """``D``'s balanced accuracy (mean of its accuracy on poisoned and on clean images) on ``x``'s latents."""
        b = np.asarray(is_poison, bool)
        prob = session.predict(self.get_features(np.asarray(x, np.float32), layer))
        pred = prob >= 0.5
        parts = [np.mean(pred[b] == 1) if b.any() else np.nan, np.mean(pred[~b] == 0) if (~b).any() else np.nan]
        return float(np.nanmean(parts))

    def _embedding_session(self, layer: str, dim: int, learning_rate: float, learning_rate_d: float, seed: int,
                           objective: str = "paper"):
        """
        The framework's half of :meth:`train_adversarial_embedding`: an object with
        ``step(x_ce, y_ce, x_d, y_d, b_d, noise, lam) -> (ce, d_loss, adv, d_acc, loss)`` (one alternating step) and
        ``predict(features) -> D's probabilities``.
        """
        raise NotImplementedError(f"Adversarial embedding is not implemented for {type(self).__name__}.")
