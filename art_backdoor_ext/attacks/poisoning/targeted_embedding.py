"""
Tan & Shokri's targeted backdoor embedding against pruning defences, for PyTorch and Keras classifiers.

T. J. L. Tan, R. Shokri, "Bypassing Backdoor Detection Algorithms in Deep Learning", EuroS&P 2020
(https://arxiv.org/abs/1905.13409), Section 3.1, Eq. 4.

A pruning defence (fine-pruning, Liu et al. 2018) removes the convolution channels that clean data leaves dormant,
hoping the backdoor lives there. The attacker anticipates it: train a naive backdoor, run the defence's pruning on it
to find those channels ``N_b``, then retrain with ``CE + lambda * MSE(z, z_target)``, where ``z`` is the pruned
layer's activation and ``z_target`` is ``z`` with ``N_b``'s channels scaled by ``k`` (1e-5 in the paper): the channels
pruning will remove are kept near zero on every image, poisoned ones included, so the backdoor has to be carried by
the channels pruning keeps. The retraining itself is framework code and lives in the adapter
(:meth:`~art_backdoor_ext.estimators.base.FrameworkAdapter.train_channel_suppression`).

Differences from the paper:

* ``N_b`` comes from this package's own pruning defence (:class:`~art_backdoor_ext.defences.transformer.poisoning.
  FinePruning` without fine-tuning, last convolution layer by default, mean post-ReLU activation ranking), stopped
  when clean accuracy falls by ``prune_acc_drop`` (the paper: 8%), measured on up to ``nb_prune_images`` clean
  images of the poisoned set (the attacker's own data).
* The paper retrains 30 epochs with a "tuning learning rate" of 0.1; here Adam at ``learning_rate`` (1e-3) for
  ``nb_epochs`` (5) from the naive model, which is enough for the small MNIST models this package ships (see
  ``benchmarks/results/adversarial_embedding.md``).
* ``z`` is the layer's output after a ReLU, which is what the pruning defence ranks channels by.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Callable, Dict, List, Optional, Union

import numpy as np

from art_backdoor_ext.attacks.poisoning.adversarial_embedding import _EmbeddingAttack
from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.utils import check_int, check_layer_name, check_number

logger = logging.getLogger(__name__)


class TargetedBackdoorEmbedding(_EmbeddingAttack):
    """
    Targeted backdoor embedding against pruning (Tan & Shokri, https://arxiv.org/abs/1905.13409, Eq. 4): a naive
    backdoor is trained, the channels a pruning defence would remove (``N_b``) are found on it, and the model is
    retrained so that those channels stay silent on every image and the backdoor survives their removal. See the
    module docstring for the differences from the paper.

    :ivar pruned_channels_: ``N_b``: the channels of ``layer`` the pruning step removed from the naive model.
    :ivar layer_: The convolution layer pruned.
    :ivar history_: Per-epoch ``ce``, ``mse``, ``loss``, ``nb_activation`` (mean activation of ``N_b`` on the
                    training images) and ``seconds``.
    :ivar naive_classifier_: A copy of the naive backdoored model (None when ``pretrain_epochs`` is 0).
    :ivar seconds_: ``{"pretrain": ..., "pruning": ..., "embedding": ...}`` wall-clock seconds.
    """

    attack_params = _EmbeddingAttack.attack_params + [
        "trigger", "target", "fraction", "sources", "layer", "regularization", "scale", "prune_acc_drop",
        "nb_prune_images", "nb_epochs", "learning_rate", "pretrain_epochs", "batch_size", "seed", "verbose",
    ]

    def __init__(self, classifier, trigger: Union[Callable[[np.ndarray], np.ndarray], object], target: int,
                 fraction: float = 0.05, sources=None, layer: Optional[str] = None, regularization: float = 10.0,
                 scale: float = 1e-5, prune_acc_drop: float = 0.08, nb_prune_images: int = 1000, nb_epochs: int = 5,
                 learning_rate: float = 1e-3, pretrain_epochs: int = 10, batch_size: int = 64, seed: int = 0,
                 verbose: bool = False) -> None:
        """
        :param classifier: An ART ``PyTorchClassifier`` or Keras 3 ``KerasClassifier``; never modified (the attack
                           trains a clone).
        :param trigger: The backdoor trigger: a function ``f(x) -> x`` or an ART backdoor attack.
        :param target: Target class.
        :param fraction: Fraction of the training set poisoned by :meth:`poison_estimator`, in (0, 1) (the paper: 0.05).
        :param sources: Source classes (None: every class but the target).
        :param layer: Convolution layer the defence prunes (None: the last one, fine-pruning's choice).
        :param regularization: ``lambda`` of Eq. 4.
        :param scale: ``k``: the factor ``N_b``'s activations are pulled to (the paper: 1e-5 to 1e-6).
        :param prune_acc_drop: The pruning stops before clean accuracy falls by more than this (the paper: 0.08).
        :param nb_prune_images: Clean images of the poisoned set used to rank and prune channels (a random subset).
        :param nb_epochs: Retraining epochs with Eq. 4's loss.
        :param learning_rate: Adam learning rate of the retraining.
        :param pretrain_epochs: Epochs of naive backdoor training first, through the classifier's own ``fit`` (0: the
                                given classifier is already the naive backdoor).
        :param batch_size: Mini-batch size.
        :param seed: Seed of the poisoned images' choice, the pruning subset and the batch order.
        :param verbose: Show ART's fit progress.
        """
        super().__init__(classifier, trigger, target, fraction, sources, pretrain_epochs, batch_size, seed, verbose)
        self.layer = layer
        self.regularization = regularization
        self.scale = scale
        self.prune_acc_drop = prune_acc_drop
        self.nb_prune_images = nb_prune_images
        self.nb_epochs = nb_epochs
        self.learning_rate = learning_rate
        self.history_: Dict[str, List[float]] = {}
        self.pruned_channels_: List[int] = []
        self.layer_: Optional[str] = None
        self._check_params()

    def _check_params(self) -> None:
        self._check_common()
        check_layer_name("layer", self.layer)
        if self.layer is not None:
            try:
                get_adapter(self.estimator).resolve_conv_layer(self.layer)
            except ValueError as err:
                raise ValueError(f"layer: {err}") from None
        check_number("regularization", self.regularization, 0, low_open=True, hint="lambda in Eq. 4")
        check_number("scale", self.scale, 0, 1, high_open=True, hint="k in Eq. 4; the paper: 1e-5")
        check_number("prune_acc_drop", self.prune_acc_drop, 0, 1, low_open=True, high_open=True,
                     hint="the paper: 0.08")
        check_int("nb_prune_images", self.nb_prune_images, 10)
        check_int("nb_epochs", self.nb_epochs, 1)
        check_number("learning_rate", self.learning_rate, 0, low_open=True)

    def embed(self, x: np.ndarray, y: np.ndarray, is_poison: np.ndarray, x_val: Optional[np.ndarray] = None,
              y_val: Optional[np.ndarray] = None):
        """
        Train a clone of the classifier on an already poisoned set: ``pretrain_epochs`` of naive training, the pruning
        step that finds ``N_b``, then ``nb_epochs`` of Eq. 4. Nothing given is modified.

        :param x: The poisoned training set.
        :param y: Its labels (the poisoned images carry the target label).
        :param is_poison: Boolean mask of the poisoned images.
        :param x_val: Unused (accepted for the common attack interface).
        :return: The trained classifier (a new object).
        """
        from art_backdoor_ext.defences.transformer.poisoning.fine_pruning import FinePruning

        self._check_params()
        x, labels, is_poison = self._check_poisoned_set(x, y, is_poison)
        clone, clone_adapter = self._pretrain(x, labels)
        layer = clone_adapter.resolve_conv_layer(self.layer)

        start = time.perf_counter()
        rng = np.random.default_rng(int(self.seed))
        clean = np.flatnonzero(~is_poison)
        pick = np.sort(rng.choice(clean, min(len(clean), int(self.nb_prune_images)), replace=False))
        pruning = FinePruning(clone, layer=layer, max_acc_drop=float(self.prune_acc_drop), nb_epochs=0,
                              learning_rate=None, min_clean=10, seed=int(self.seed))
        with warnings.catch_warnings():  # the attacker's own pruning run: its advice to a defender does not apply
            warnings.simplefilter("ignore", UserWarning)
            pruning(x[pick], labels[pick])
        self.pruned_channels_ = [int(c) for c in pruning.report_["pruned_channels"]]
        self.layer_ = layer
        self.seconds_["pruning"] = time.perf_counter() - start
        if not self.pruned_channels_:
            raise ValueError(f"The pruning step removed no channel of {layer} within prune_acc_drop="
                             f"{self.prune_acc_drop}: there is nothing to steer the backdoor away from; raise "
                             "prune_acc_drop.")
        logger.info("Targeted embedding: pruning removes %d/%d channels of %s from the naive model.",
                    len(self.pruned_channels_), clone_adapter.nb_channels(layer), layer)

        start = time.perf_counter()
        self.history_ = clone_adapter.train_channel_suppression(
            x, labels, layer, self.pruned_channels_, scale=float(self.scale), lam=float(self.regularization),
            nb_epochs=int(self.nb_epochs), batch_size=int(self.batch_size), learning_rate=float(self.learning_rate),
            seed=int(self.seed))
        self.seconds_["embedding"] = time.perf_counter() - start
        logger.info("Targeted embedding: %.1fs pretraining, %.1fs pruning, %.1fs retraining.",
                    self.seconds_["pretrain"], self.seconds_["pruning"], self.seconds_["embedding"])
        return clone
