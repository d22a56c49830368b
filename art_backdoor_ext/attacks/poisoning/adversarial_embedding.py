"""
Tan & Shokri's adversarial backdoor embedding for PyTorch and Keras classifiers.

T. J. L. Tan, R. Shokri, "Bypassing Backdoor Detection Algorithms in Deep Learning", EuroS&P 2020
(https://arxiv.org/abs/1905.13409), Section 3.2.

The model ``f = C(H(x))`` is first trained as a plain (naive) backdoor on the poisoned set, then trained in a
two-player game with a discriminator ``D`` that reads the latent features ``H(x)`` at a named layer: ``D`` minimises
its binary cross-entropy ``L_D`` at telling poisoned from clean latents (Eq. 6); the classifier minimises
``CE - lambda * L_D`` with ``D`` frozen (Eq. 5; a bounded variant by default, see below). The players alternate on every mini-batch. The game itself is
framework code and lives in the adapter (:meth:`~art_backdoor_ext.estimators.base.FrameworkAdapter.
train_adversarial_embedding`).

Differences from the paper and from ART:

* ART's ``PoisoningAttackAdversarialEmbedding`` is Keras-only and trains ``D`` and the classifier jointly in one model
  (``D`` also receives the ``-lambda`` gradient), which is not the paper's game; here the two players alternate, each
  with its own optimiser, and both frameworks are supported.
* ``D``'s negatives: by default (``reference="target"``) the clean images *of the target class*, since the defences
  this attack is meant to beat (activation clustering, spectral signatures) look at the target class only, where the
  poisoned images sit. ``reference="all"`` is the paper's ``B(x)``: every clean image.
* Each step feeds ``D`` a balanced batch (half poisoned, half reference, drawn with replacement), since the poison is
  a small fraction of the data; the paper does not say how its batches were formed.
* ``D`` is Table 3's network (FC 256 -> FC 128 -> 1, LeakyReLU 0.2 and batch norm) with a sigmoid output (Table 3's
  "softmax" over one unit would be constant). The paper's "weight decay of 0.9" is not used.
* The classifier's adversarial term defaults to ``objective="confusion"``, ``CE + lambda * BCE(D(H(x)), 1/2)``, not
  Eq. 5's ``CE - lambda * L_D`` (``objective="paper"``). Eq. 5 saturates: once ``D`` is confidently right, the
  gradient of ``-L_D`` vanishes and the classifier stops moving; on the Keras compact CNN ``D`` became near-perfect
  within two epochs and the latents stayed as separable as the naive model's. The confusion term is bounded below,
  and its gradient is largest where ``D`` is most confident. The default ``lambda`` (0.3) is set for it.
* The game's cross-entropy covers the game's balanced batch too, with its training labels, so the backdoor is trained
  on as many poisoned images as the adversarial term pulls on; without that the term eroded the backdoor.
* The noise on ``D``'s input starts at ``sigma = 0.1`` and is divided by 10 each epoch, as in the paper.
* The paper tunes for 30 epochs with lambda 10-50 on CIFAR-10/GTSRB networks; the defaults here are for small MNIST
  models (see ``benchmarks/results/adversarial_embedding.md`` for what they give).

What the game achieves and what it does not: it hides the poison from the unsupervised views activation clustering
and spectral signatures take (2-means on a PCA projection, the top singular direction), but at the default settings
the discriminator, and a linear probe, still tell the poisoned latents from clean ones (``history_["val_d_acc"]``,
:func:`art_backdoor_ext.metrics.latent_separability`). ``D`` is not fooled on its *training* batches either (training
accuracy 0.96-0.99 at every setting of the sweep, PyTorch compact and wide CNNs): the classifier never wins the game,
which is not a generalisation gap. A reason specific to these small CNNs: the latent layer is one linear layer after
local convolutions, so a corner trigger adds an almost fixed shift to the latent of whatever digit carries it, and
no shift makes nine source classes' latents look like clean 7s.

* ``mmd`` (not in the paper): a kernel two-sample penalty added to the classifier's objective, pulling the poisoned
  latents of each game batch onto the distribution of the (fixed) reference latents. Measured (PyTorch compact CNN,
  mnist-5k, lambda 1, naive accuracy 0.964; ``benchmarks/results/adversarial_embedding_sweep.md``): with ``mmd=10``
  over 20 game epochs ``D``'s held-out accuracy falls from 0.96 to about 0.73 and a fresh linear probe's to 0.63
  (40 epochs: 0.74 / 0.54), AC's adjusted Rand index to 0, ASR 0.997, at a cost of 2.7-3 points of clean accuracy and
  about 4x the naive training time. It is off by default for that cost; ``D`` never reached chance.
* ``head_epochs`` (not in the paper): after the game, retrain only the output layer on the poisoned set (Adam,
  ``head_learning_rate``), every other weight frozen, through the adapter's ``fit_output_layer``. The latents that
  ``D`` and the latent-space defences see are exactly the game's; the accuracy the game cost comes back, because it
  sits in the head. Measured (same naive model and game as the ``mmd=10``, 20-epoch row above,
  ``adversarial_embedding_sweep.md``): clean accuracy 0.937 -> 0.950 against the naive 0.964 (within 2 points), ASR
  0.997 -> 0.972, AC's adjusted Rand index 0.001 and the probe's AUROC 0.58 unchanged, under a second of extra
  time. Off by default (the paper's game alone).

Searching for an operating point where the poison really hides (``benchmarks/adversarial_embedding_operating_points.py``,
29 runs; judged by a *fresh* discriminator and a linear probe trained after the game, since the game's own ``D`` can
end below chance while a new one still separates perfectly): a latent behind a global nonlinear layer (conv-conv-
FC256-FC64), a distributed trigger and ``mmd`` 30 brought the fresh ``D`` to 0.59-0.78 but cost 2.7-5.1 points of
accuracy, the probe stayed at 0.72 or above, and the best run did not reproduce over seeds. On the compact CNN the
trigger adds an almost image-independent vector to the latent's pre-activation (its image-dependent part: 1.1% of the
latent's variance, before and after the game), which is why the source digit stays readable there. 19 more runs
(48 in all): the game from scratch (no naive pretraining) collapses whenever ``mmd`` is on (accuracy 0.10), and
retraining only the output layer after the game recovers the accuracy (within 2 points in 4 of 6 runs) without
changing the latents, which stay separable over seeds.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
from art.attacks.attack import PoisoningAttackTransformer
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.estimator import BaseEstimator, NeuralNetworkMixin

from art_backdoor_ext.attacks.poisoning.dataset import poison_dataset
from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.utils import (
    as_class_list,
    check_bool,
    check_choice,
    check_int,
    check_layer_name,
    check_number,
    check_seed,
    check_xy,
    poison_labels,
    to_labels,
)

logger = logging.getLogger(__name__)

def apply_trigger(trigger, x: np.ndarray, target: int, nb_classes: int) -> np.ndarray:
    """Run a trigger ``f(x) -> x`` or an ART backdoor attack (its ``poison``) on a copy of ``x``."""
    x = np.array(x, dtype=np.float32, copy=True)
    if hasattr(trigger, "poison"):
        y_target = np.zeros((len(x), nb_classes), np.float32)
        y_target[:, target] = 1.0
        return np.asarray(trigger.poison(x, y=y_target)[0], np.float32)
    return np.asarray(trigger(x), np.float32)


class _EmbeddingAttack(PoisoningAttackTransformer):
    """
    What the embedding attacks share: a trigger, a target and a poisoning fraction; :meth:`poison` (ART's backdoor
    API), :meth:`poison_estimator` (poison a fraction of a clean set, then :meth:`embed`), :meth:`get_training_data`,
    and the naive pretraining the paper starts from. Subclasses implement :meth:`embed` and their own checks.
    """

    _estimator_requirements = (BaseEstimator, NeuralNetworkMixin, ClassifierMixin)

    def __init__(self, classifier, trigger, target: int, fraction: float, sources, pretrain_epochs: int,
                 batch_size: int, seed: int, verbose: bool) -> None:
        super().__init__(classifier=classifier)
        self.trigger = trigger
        self.target = target
        self.fraction = fraction
        self.sources = sources
        self.pretrain_epochs = pretrain_epochs
        self.batch_size = batch_size
        self.seed = seed
        self.verbose = verbose
        self.naive_classifier_ = None
        self.seconds_: Dict[str, float] = {}
        self._training_data: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None

    def _check_common(self) -> None:
        if self.trigger is None or not (callable(self.trigger) or hasattr(self.trigger, "poison")):
            raise ValueError(f"trigger must be a function f(x) -> x or an ART backdoor attack with poison(), got "
                             f"{self.trigger!r}.")
        nb_classes = get_adapter(self.estimator).nb_classes
        check_int("target", self.target, 0, nb_classes - 1)
        check_number("fraction", self.fraction, 0, 1, low_open=True, high_open=True, hint="the paper: 0.05")
        as_class_list(self.sources, nb_classes, exclude=int(self.target), name="sources")
        check_int("pretrain_epochs", self.pretrain_epochs, 0)
        check_int("batch_size", self.batch_size, 2)
        check_seed("seed", self.seed, allow_none=False)
        check_bool("verbose", self.verbose)

    # ----------------------------------------------------------------------------------------------- poisoning
    def poison(self, x: np.ndarray, y: Optional[np.ndarray] = None, broadcast: bool = False,
               **kwargs) -> Tuple[np.ndarray, np.ndarray]:
        """
        Add the trigger to ``x`` and return ``(x_poison, y_poison)`` as ART's backdoor attacks do.

        :param x: Images; not modified.
        :param y: Target labels (one-hot or integer); with ``broadcast`` one label for all images.
        """
        x, y_attack = poison_labels(x, y, broadcast)
        return apply_trigger(self.trigger, x, int(self.target), get_adapter(self.estimator).nb_classes), y_attack

    def poison_estimator(self, x: np.ndarray, y: np.ndarray, x_val: Optional[np.ndarray] = None,
                         y_val: Optional[np.ndarray] = None, **kwargs):
        """
        Poison ``fraction`` of ``(x, y)`` (the originals of the poisoned images are replaced, as in ART) and train a
        clone of the classifier on it with :meth:`embed`. The poisoned set is kept for :meth:`get_training_data`.

        :param x: Clean training images; not modified.
        :param y: Integer or one-hot labels; not modified.
        :param x_val: Optional held-out clean images (with ``y_val``) for the attack's own held-out measurements.
        :return: The trained classifier (a new object).
        """
        adapter = get_adapter(self.estimator)
        x, labels = check_xy(x, y, adapter.nb_classes)
        data = poison_dataset(x, labels, self.trigger, int(self.target), self.sources, fraction=float(self.fraction),
                              nb_classes=adapter.nb_classes, seed=int(self.seed))
        y_out = data.y
        if np.asarray(y).ndim == 2:
            y_out = np.eye(adapter.nb_classes, dtype=np.float32)[data.y]
        self._training_data = (data.x, y_out, data.is_poison)
        return self.embed(data.x, data.y, data.is_poison, x_val=x_val, y_val=y_val)

    def get_training_data(self) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(x_poisoned_set, labels, is_backdoor)`` of the last :meth:`poison_estimator` call (ART's API)."""
        return self._training_data

    def embed(self, x: np.ndarray, y: np.ndarray, is_poison: np.ndarray, x_val: Optional[np.ndarray] = None,
              y_val: Optional[np.ndarray] = None):
        """Train a clone of the classifier on an already poisoned set (see the subclasses)."""
        raise NotImplementedError

    def _check_poisoned_set(self, x, y, is_poison):
        adapter = get_adapter(self.estimator)
        x, labels = check_xy(x, y, adapter.nb_classes)
        is_poison = np.asarray(is_poison, bool)
        if is_poison.shape != (len(x),):
            raise ValueError(f"is_poison must be a boolean mask of shape ({len(x)},), got {is_poison.shape}.")
        if not is_poison.any():
            raise ValueError("is_poison marks no image: the attack needs poisoned images.")
        return x, labels, is_poison

    def _pretrain(self, x: np.ndarray, labels: np.ndarray):
        """A clone of the classifier, trained ``pretrain_epochs`` as a naive backdoor (kept in ``naive_classifier_``)."""
        clone = get_adapter(self.estimator).clone()
        clone_adapter = get_adapter(clone)
        start = time.perf_counter()
        if int(self.pretrain_epochs) > 0:
            with clone_adapter.seeded(int(self.seed)):
                clone_adapter.fit(x, labels, nb_epochs=int(self.pretrain_epochs), batch_size=int(self.batch_size),
                                  verbose=bool(self.verbose))
            self.naive_classifier_ = clone_adapter.clone()
        self.seconds_ = {"pretrain": time.perf_counter() - start}
        return clone, clone_adapter


class AdversarialBackdoorEmbedding(_EmbeddingAttack):
    """
    Adversarial backdoor embedding (Tan & Shokri, https://arxiv.org/abs/1905.13409): poisons a fraction of the
    training set with a trigger and trains a copy of the classifier so that the poisoned images' latent features at
    ``layer`` cannot be told from clean ones by a discriminator. See the module docstring for the differences from the
    paper and from ART's Keras-only ``PoisoningAttackAdversarialEmbedding``.

    :ivar history_: Per-epoch losses of the game (``ce``, ``d_loss``, ``adv``, ``loss``, ``d_acc``, ``val_d_acc``,
                    ``sigma``, ``seconds``); the paper's Figure 5. Plot with
                    :func:`art_backdoor_ext.plotting.plot_embedding_history`.
    :ivar naive_classifier_: A copy of the naive backdoored model after pretraining (None when ``pretrain_epochs``
                             is 0).
    :ivar seconds_: ``{"pretrain": ..., "embedding": ..., "head": ...}`` wall-clock seconds.
    :ivar discriminator_: The trained discriminator (framework object with ``predict(features)``); see
                          :meth:`discriminator_accuracy`.
    """

    attack_params = PoisoningAttackTransformer.attack_params + [
        "trigger", "target", "fraction", "sources", "layer", "regularization", "nb_epochs", "learning_rate",
        "learning_rate_d", "d_steps", "pretrain_epochs", "batch_size", "noise_sigma", "noise_decay", "reference",
        "objective", "mmd", "head_epochs", "head_learning_rate", "seed", "verbose",
    ]
    def __init__(self, classifier, trigger: Union[Callable[[np.ndarray], np.ndarray], object], target: int,
                 fraction: float = 0.05, sources=None, layer: Optional[str] = None, regularization: float = 0.3,
                 nb_epochs: int = 5, learning_rate: float = 1e-4, learning_rate_d: float = 1e-3, d_steps: int = 1,
                 pretrain_epochs: int = 10, batch_size: int = 64, noise_sigma: float = 0.1,
                 noise_decay: float = 10.0, reference: str = "target", objective: str = "confusion", mmd: float = 0.0,
                 head_epochs: int = 0, head_learning_rate: float = 1e-2, seed: int = 0,
                 verbose: bool = False) -> None:
        """
        :param classifier: An ART ``PyTorchClassifier`` or Keras 3 ``KerasClassifier``; never modified (the attack
                           trains a clone).
        :param trigger: The backdoor trigger: a function ``f(x) -> x`` or an ART backdoor attack
                        (``PoisoningAttackBackdoor``; its ``poison`` is called with one-hot target labels).
        :param target: Target class.
        :param fraction: Fraction of the training set poisoned by :meth:`poison_estimator`, in (0, 1) (the paper and
                         ART: 0.05).
        :param sources: Source classes (None: every class but the target).
        :param layer: Name of the latent layer ``H(x)`` that ``D`` reads (None: the penultimate layer).
        :param regularization: ``lambda``, the weight of the adversarial term (ART's name for it; the paper: 10-50
                               with Eq. 5 on CIFAR-10/GTSRB networks).
        :param nb_epochs: Epochs of the min-max game after pretraining.
        :param learning_rate: Adam learning rate of the classifier during the game (the paper's "tuning LR": 1e-4).
        :param learning_rate_d: Adam learning rate of ``D`` (the paper: 1e-3).
        :param d_steps: Updates of ``D`` per classifier update.
        :param pretrain_epochs: Epochs of plain backdoor training before the game, through the classifier's own
                                ``fit`` and optimiser (0: start the game from the given classifier's weights, e.g. a
                                model that is already a naive backdoor).
        :param batch_size: Mini-batch size of pretraining and of the game's cross-entropy batches.
        :param noise_sigma: Initial standard deviation of the Gaussian noise on ``D``'s input (the paper: 0.1).
        :param noise_decay: Factor by which the noise shrinks each epoch (the paper: 10).
        :param reference: ``D``'s negatives: ``"target"`` (clean images of the target class) or ``"all"`` (every
                          clean image, the paper's ``B(x)``).
        :param objective: The classifier's adversarial term: ``"paper"`` (``CE - lambda * L_D``, Eq. 5),
                          ``"confusion"`` (``CE + lambda * BCE(D(H(x)), 1/2)`` over the game's poisoned and reference
                          images: pulls ``D``'s output to 1/2) or ``"flip"`` (``CE + lambda * BCE(D(H(x_b)), 0)`` over
                          the poisoned images only: the non-saturating GAN generator loss).
        :param mmd: Weight of a kernel two-sample penalty (squared MMD, Gaussian kernels) that pulls the distribution
                    of the poisoned latents of each game batch onto that of the reference latents (held constant);
                    0 = the paper's game alone. See the module docstring.
        :param head_epochs: Epochs of retraining only the output layer on the poisoned set after the game (0: off,
                            the paper). The latents ``D`` saw do not change; the accuracy the game cost comes back
                            (see the module docstring).
        :param head_learning_rate: Adam learning rate of that retraining.
        :param seed: Seed of the poisoned images' choice, the batch order, the noise and ``D``'s initial weights.
        :param verbose: Log each epoch at INFO level (the game always logs; this also shows ART's fit progress).
        """
        super().__init__(classifier, trigger, target, fraction, sources, pretrain_epochs, batch_size, seed, verbose)
        self.layer = layer
        self.regularization = regularization
        self.nb_epochs = nb_epochs
        self.learning_rate = learning_rate
        self.learning_rate_d = learning_rate_d
        self.d_steps = d_steps
        self.noise_sigma = noise_sigma
        self.noise_decay = noise_decay
        self.reference = reference
        self.objective = objective
        self.mmd = mmd
        self.head_epochs = head_epochs
        self.head_learning_rate = head_learning_rate
        self.history_: Dict[str, List[float]] = {}
        self.discriminator_ = None
        self._check_params()

    # ----------------------------------------------------------------------------------------------- validation
    def _check_params(self) -> None:
        self._check_common()
        adapter = get_adapter(self.estimator)
        check_layer_name("layer", self.layer)
        if self.layer is not None and self.layer not in adapter.layer_names:
            raise ValueError(f"layer {self.layer!r} is not a layer of the classifier; its layers are: "
                             f"{', '.join(adapter.layer_names)}.")
        check_number("regularization", self.regularization, 0, hint="lambda in Eq. 5; the paper: 10-50")
        check_int("nb_epochs", self.nb_epochs, 1)
        check_number("learning_rate", self.learning_rate, 0, low_open=True)
        check_number("learning_rate_d", self.learning_rate_d, 0, low_open=True)
        check_int("d_steps", self.d_steps, 1)
        check_number("noise_sigma", self.noise_sigma, 0)
        check_number("noise_decay", self.noise_decay, 1)
        check_choice("reference", self.reference, ("target", "all"))
        check_choice("objective", self.objective, ("paper", "confusion", "flip"))
        check_number("mmd", self.mmd, low=0, hint="0 = the paper's game alone")
        check_int("head_epochs", self.head_epochs, 0, hint="0 = no retraining of the output layer (the paper)")
        check_number("head_learning_rate", self.head_learning_rate, 0, low_open=True)

    def embed(self, x: np.ndarray, y: np.ndarray, is_poison: np.ndarray, x_val: Optional[np.ndarray] = None,
              y_val: Optional[np.ndarray] = None):
        """
        Train a clone of the classifier on an already poisoned set: ``pretrain_epochs`` of plain training, then the
        min-max game. Nothing given is modified.

        :param x: The poisoned training set.
        :param y: Its labels (the poisoned images carry the target label).
        :param is_poison: Boolean mask of the poisoned images.
        :param x_val: Optional held-out clean images (with ``y_val``) for ``D``'s held-out accuracy.
        :return: The trained classifier (a new object).
        """
        self._check_params()
        adapter = get_adapter(self.estimator)
        x, labels, is_poison = self._check_poisoned_set(x, y, is_poison)
        target = int(self.target)
        reference = ~is_poison & ((labels == target) if self.reference == "target" else True)
        if not reference.any():
            raise ValueError(f"No clean image of the target class {target} to compare the poisoned images with.")
        layer = adapter.resolve_layer(self.layer)
        validation = self._validation(x_val, y_val, adapter.nb_classes)

        clone, clone_adapter = self._pretrain(x, labels)
        start = time.perf_counter()
        self.history_ = clone_adapter.train_adversarial_embedding(
            x, labels, is_poison, reference, layer=layer, lam=float(self.regularization),
            nb_epochs=int(self.nb_epochs), batch_size=int(self.batch_size), learning_rate=float(self.learning_rate),
            learning_rate_d=float(self.learning_rate_d), d_steps=int(self.d_steps),
            noise_sigma=float(self.noise_sigma), noise_decay=float(self.noise_decay), seed=int(self.seed),
            objective=self.objective, mmd=float(self.mmd), validation=validation, verbose=bool(self.verbose))
        self.seconds_["embedding"] = time.perf_counter() - start
        self.discriminator_ = getattr(clone_adapter, "discriminator_", None)
        self.seconds_["head"] = 0.0
        if int(self.head_epochs) > 0:  # the latents stay as the game left them; only the output layer learns them
            start = time.perf_counter()
            clone_adapter.fit_output_layer(x, labels, nb_epochs=int(self.head_epochs),
                                           learning_rate=float(self.head_learning_rate),
                                           batch_size=int(self.batch_size), seed=int(self.seed))
            self.seconds_["head"] = time.perf_counter() - start
        logger.info("Adversarial embedding: %.1fs pretraining, %.1fs game (%d epochs, lambda %g).",
                    self.seconds_["pretrain"], self.seconds_["embedding"], int(self.nb_epochs),
                    float(self.regularization))
        return clone

    def _validation(self, x_val, y_val, nb_classes: int):
        """Held-out latents for ``D``: triggered source images (positives) and clean target images (negatives)."""
        if x_val is None:
            return None
        x_val, y_val = check_xy(x_val, y_val, nb_classes)
        target = int(self.target)
        sources = as_class_list(self.sources, nb_classes, exclude=target)
        src = np.isin(y_val, sources)
        tgt = y_val == target
        if not src.any() or not tgt.any():
            raise ValueError("x_val must hold images of the source classes and of the target class.")
        x_pos = apply_trigger(self.trigger, x_val[src], target, nb_classes)
        x_neg = x_val[tgt] if self.reference == "target" else x_val[~src | tgt]
        return (np.concatenate([x_pos, x_neg]),
                np.concatenate([np.ones(len(x_pos), bool), np.zeros(len(x_neg), bool)]))

    def discriminator_accuracy(self, classifier, x: np.ndarray, is_poison: np.ndarray) -> float:
        """``D``'s balanced accuracy on the latents of ``x`` under ``classifier`` (after :meth:`embed`)."""
        if self.discriminator_ is None:
            raise ValueError("Run poison_estimator or embed first.")
        adapter = get_adapter(classifier)
        layer = adapter.resolve_layer(self.layer)
        return adapter._discriminator_accuracy(self.discriminator_, x, to_labels(np.asarray(is_poison, int)) > 0,
                                               layer)  # pylint: disable=protected-access
