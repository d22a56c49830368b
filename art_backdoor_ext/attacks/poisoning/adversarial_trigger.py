"""
Zhong et al.'s invisible *adversarial* backdoor trigger as an ART white-box poisoning attack.

H. Zhong, C. Liao, A. C. Squicciarini, S. Zhu, D. Miller, "Backdoor embedding in convolutional neural network models via
invisible perturbation", CODASPY 2020 (https://doi.org/10.1145/3374664.3375751); used by AEGIS
(https://arxiv.org/abs/2003.00865) and by the RE paper (https://arxiv.org/abs/2010.07489, supplementary section 18).

From a surrogate classifier trained on clean data, one universal pattern ``v`` is built: start from ``v = 0``, visit
the source-class images, and for each find the minimal-L2 increment ``u`` (targeted DeepFool) that sends
``clip(x + v + u)`` to the target class; ``v <- v + u``, then project ``v`` onto the L2 ball of radius ``norm_bound``.
Here the images are visited in mini-batches: DeepFool runs on a whole batch at once and ``v`` takes the mean of the
batch's increments before the projection (``batch_size=1`` is the paper's sequential visit). Gradients come from the
framework adapter, so PyTorch and Keras classifiers both work.
"""
from __future__ import annotations

import logging
import time
from typing import Optional, Tuple

import numpy as np
from art.attacks.attack import PoisoningAttackWhiteBox
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.estimator import BaseEstimator, NeuralNetworkMixin

from art_backdoor_ext.attacks.poisoning.perturbations import PatternTrigger
from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.utils import _is_int, batches, check_bool, check_int, check_number, poison_labels, progress

logger = logging.getLogger(__name__)


def project_l2(v: np.ndarray, radius: float) -> np.ndarray:
    """Project ``v`` onto the L2 ball of ``radius`` (a copy)."""
    norm = float(np.linalg.norm(v.ravel()))
    return v * (radius / norm) if norm > radius else v.copy()


class PoisoningAttackAdversarialTrigger(PoisoningAttackWhiteBox):
    """
    Builds Zhong et al.'s universal adversarial pattern against a (surrogate) classifier with
    :meth:`generate_pattern`, then poisons images by adding it (clipped, 8-bit quantised by default).

    :ivar pattern: The universal pattern ``v`` (one image, the classifier's input layout), L2 norm <= ``norm_bound``;
                   None until :meth:`generate_pattern` has run.
    :ivar fooling_rates: Fraction of the source images the surrogate sends to the target after each pass.
    """

    attack_params = PoisoningAttackWhiteBox.attack_params + [
        "target", "norm_bound", "max_passes", "max_iter", "overshoot", "batch_size", "fooling_rate", "quantise",
        "verbose",
    ]
    _estimator_requirements = (BaseEstimator, NeuralNetworkMixin, ClassifierMixin)

    def __init__(self, classifier, target: Optional[int] = None, norm_bound: float = 0.5, max_passes: int = 5,
                 max_iter: int = 50, overshoot: float = 0.02, batch_size: int = 32, fooling_rate: float = 0.95,
                 quantise: bool = True, verbose: bool = False) -> None:
        """
        :param classifier: The surrogate: a trained PyTorch or Keras ART classifier (clean data).
        :param target: Target class (can also be given to :meth:`generate_pattern`).
        :param norm_bound: Radius ``xi`` of the L2 ball the pattern is projected onto (RE paper: 0.5 on CIFAR-10).
        :param max_passes: Passes over the source images.
        :param max_iter: DeepFool iterations per batch.
        :param overshoot: DeepFool overshoot (the step is scaled by ``1 + overshoot``).
        :param batch_size: Images visited at once (1 = the paper's sequential visit).
        :param fooling_rate: Stop once this fraction of the source images goes to the target.
        :param quantise: Round poisoned images to the 8-bit grid.
        :param verbose: Show a progress bar.
        """
        super().__init__(classifier=classifier)
        self.target = target
        self.norm_bound = norm_bound
        self.max_passes = max_passes
        self.max_iter = max_iter
        self.overshoot = overshoot
        self.batch_size = batch_size
        self.fooling_rate = fooling_rate
        self.quantise = quantise
        self.verbose = verbose
        self.pattern: Optional[np.ndarray] = None
        self.fooling_rates: list = []
        self._check_params()
        self._adapter = get_adapter(classifier)

    def _check_params(self) -> None:
        check_number("norm_bound", self.norm_bound, low=0, low_open=True, hint="an L2 radius, e.g. 0.5")
        for name in ("max_passes", "max_iter", "batch_size"):
            check_int(name, getattr(self, name), low=1)
        check_number("overshoot", self.overshoot, low=0)
        check_number("fooling_rate", self.fooling_rate, low=0, high=1, low_open=True)
        check_bool("quantise", self.quantise)
        check_bool("verbose", self.verbose)
        if self.target is not None:
            self._check_target(self.target)

    def _check_target(self, target) -> int:
        nb_classes = self.estimator.nb_classes
        if not _is_int(target) or not 0 <= target < nb_classes:
            raise ValueError(f"target must be a class index in [0, {nb_classes}), got {target!r}.")
        return int(target)

    # ----------------------------------------------------------------------------------------------- pattern search
    def _deepfool(self, x: np.ndarray, v: np.ndarray, target: int) -> Tuple[np.ndarray, np.ndarray]:
        """
        Targeted DeepFool on a batch: per image the increment ``u`` that sends ``clip(x + v + u)`` to ``target``.

        :return: ``(u, needed)``: increments and the mask of images that were not already at the target.
        """
        adapter = self._adapter
        u = np.zeros_like(x)
        tgt = np.full(len(x), target, np.int64)
        pred = adapter.predict_labels(np.clip(x + v, 0.0, 1.0))
        needed = pred != target
        active = needed.copy()
        for _ in range(int(self.max_iter)):
            if not active.any():
                break
            idx = np.flatnonzero(active)
            xc = np.clip(x[idx] + v + u[idx], 0.0, 1.0).astype(np.float32)
            lp_t, g_t = adapter.log_prob_and_grad(xc, tgt[idx])
            lp_k, g_k = adapter.log_prob_and_grad(xc, pred[idx])
            # log p_t - log p_k equals the logit difference, so this is DeepFool's linearised boundary t vs k
            f = lp_t - lp_k
            w = (g_t - g_k).reshape(len(idx), -1)
            w_norm2 = np.maximum((w ** 2).sum(axis=1), 1e-12)
            r = ((np.abs(f) + 1e-4) / w_norm2)[:, None] * w
            u[idx] += (1.0 + float(self.overshoot)) * r.reshape(xc.shape)
            pred[idx] = adapter.predict_labels(np.clip(x[idx] + v + u[idx], 0.0, 1.0))
            active[idx] = pred[idx] != target
        return u, needed

    def generate_pattern(self, x_source: np.ndarray, target: Optional[int] = None) -> np.ndarray:
        """
        Build the universal pattern from source-class images (clean training images of the source class(es)).

        :param x_source: Source images in the classifier's input layout; not modified.
        :param target: Target class (defaults to the one given at construction).
        :return: The pattern (also stored as :attr:`pattern`).
        """
        target = self.target if target is None else target
        if target is None:
            raise ValueError(f"A target class in [0, {self.estimator.nb_classes}) is needed: pass target.")
        target = self._check_target(target)
        x = np.asarray(x_source)
        if np.issubdtype(x.dtype, np.number) and x.ndim == len(self.estimator.input_shape) + 1 and len(x) == 0:
            raise ValueError("x_source must hold at least one image.")
        # finite, the classifier's layout (with the transpose to apply) and range: an all-NaN or 0-255 batch would
        # give a meaningless pattern
        x = self._adapter.check_input(x, "x_source")
        self.target = target
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        v = np.zeros(x.shape[1:], np.float32)
        self.fooling_rates = []
        nb_batches = len(list(batches(len(x), int(self.batch_size))))
        bar = progress(None, self.verbose, total=int(self.max_passes) * nb_batches, desc="adversarial trigger")
        for _ in range(int(self.max_passes)):
            order = rng.permutation(len(x))
            for s in batches(len(x), int(self.batch_size)):
                u, needed = self._deepfool(x[order[s]], v, target)
                if needed.any():
                    v = project_l2(v + u[needed].mean(axis=0), float(self.norm_bound)).astype(np.float32)
                bar.update(1)
            rate = float(np.mean(self._adapter.predict_labels(np.clip(x + v, 0.0, 1.0)) == target))
            self.fooling_rates.append(rate)
            logger.info("Adversarial trigger pass %d: surrogate fooling rate %.3f, |v|_2 = %.3f.",
                        len(self.fooling_rates), rate, float(np.linalg.norm(v)))
            if rate >= float(self.fooling_rate):
                break
        bar.close()
        self.pattern = v
        self.seconds = time.perf_counter() - start
        return v

    # ----------------------------------------------------------------------------------------------- poisoning
    def trigger(self) -> PatternTrigger:
        """The pattern as ART's perturbation ``f(x) -> x`` (with a ``.pattern`` attribute)."""
        if self.pattern is None:
            raise ValueError("Call generate_pattern(x_source) first.")
        return PatternTrigger(self.pattern, kind="adversarial", quantise=self.quantise)

    def poison(self, x: np.ndarray, y: Optional[np.ndarray] = None, broadcast: bool = False,
               **kwargs) -> Tuple[np.ndarray, np.ndarray]:
        """
        Add the pattern to ``x`` (clipped; 8-bit when ``quantise``) and return ``(x_poison, y_poison)``.

        :param x: Images in any layout; not modified.
        :param y: Target labels (one-hot or integer); with ``broadcast`` one label for all images.
        :param broadcast: Broadcast a single target label.
        """
        if self.pattern is None:
            raise ValueError("Call generate_pattern(x_source) before poison().")
        x, y_attack = poison_labels(x, y, broadcast)
        return self.trigger()(x), y_attack

    def target_probability(self, x: np.ndarray, with_pattern: bool = True) -> np.ndarray:
        """The surrogate's probability of the target class on ``x`` (optionally with the pattern added)."""
        if self.target is None:
            raise ValueError("No target class set.")
        if with_pattern:
            x = self.trigger()(x)
        logp, _ = self._adapter.log_prob_and_grad(np.asarray(x, np.float32), np.full(len(x), self.target))
        return np.exp(logp)

