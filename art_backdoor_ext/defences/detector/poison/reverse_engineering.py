"""
Reverse-engineering (RE) defence against imperceptible backdoors: estimate, for every ordered class pair (s, t), the
smallest additive pattern that sends a fraction ``pi`` of class-s training images to t; detect an attack with an
order-statistic test on the reciprocal pattern norms; cleanse the training set of the inferred target class.

| Paper: Xiang, Miller, Kesidis, "Reverse Engineering Imperceptible Backdoor Attacks on Deep Neural Networks for
  Detection and Training Set Cleansing", Computers & Security 2021, https://arxiv.org/abs/2010.07489 (Algorithm 1,
  Eqs. 7-12).

Implementation notes (what the paper leaves open, and how it is done here):

* **All pairs at once.** The K(K-1) patterns are stacked into one array and optimised together: every step samples
  ``batch_size`` images of class s and ``batch_size`` of class t for each unfinished pair, builds one input batch
  (``clip(x_s + v_st)`` and ``clip(x_t - v_st)``), and gets every per-image gradient from one forward/backward pass of
  the framework adapter (:meth:`FrameworkAdapter.log_prob_and_grad`); per-pair gradients of J_st (Eq. 9) are the
  per-pair means. A pair stops (is masked out) as soon as a fraction ``pi`` of *all* class-s training images goes to t;
  the full check runs only for pairs whose sampled batch already reaches ``pi``, so it costs little. Pairs still
  unfinished at ``max_iter`` are reported in ``not_converged`` and keep their last pattern (whose norm is then a lower
  bound of the norm needed, i.e. their reciprocal statistic is an upper bound).
* ``log(1 - p_t)`` and its gradient come from the adapter's ``complement`` mode (the log-sum of the other classes'
  probabilities); the textbook form ``-(p_t / (1 - p_t)) d log p_t / dx`` is mathematically the same but underflows
  in float32 for confidently classified images (``1 - p_t == 0``).
* The gradient through the clipping ``m(x; v) = clip(x + v)`` is the subgradient: zero on clipped pixels.
* The Gamma null is fitted by ``scipy.stats.gamma.fit(r, floc=0)``: reciprocal norms are positive and the
  two-parameter Gamma (shape, scale) is the paper's null; a free location makes the three-parameter MLE degenerate
  (the location runs up to the smallest statistic and the shape blows up) on the K(K-1) - (K-1) = 81 values per fit.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from typing import Any, Dict, Hashable, List, Optional, Tuple

import numpy as np

from art_backdoor_ext.defences.base import PoisonFilteringDefenceBase
from art_backdoor_ext.utils import check_bool, check_choice, check_int, check_number, progress

logger = logging.getLogger(__name__)

_NORMS = {"l2": 2, "linf": np.inf, "l1": 1}

MAX_UNCONVERGED_SHARE = 0.5
"""When more than this share of the class pairs hit ``max_iter`` and nothing is detected, RE reports inconclusive:
their norms are lower bounds, their reciprocal statistics upper bounds that widen the Gamma null."""
# parameters that change the estimated patterns; a second detect_poison() that changes none of them reuses the patterns
_ESTIMATION_PARAMS = ("classifier", "pi", "lam", "step_size", "step_growth", "optimizer", "max_iter", "batch_size",
                      "max_images_per_pass", "seed")


@dataclasses.dataclass(frozen=True)
class PatternEstimate:
    """
    The estimated patterns of every ordered class pair (lines 2-8 of Algorithm 1), what determined them (``key``: the
    classifier, the training data and the estimation parameters), and what they cost. Inference and cleansing can be
    run on one estimate under several rules (:meth:`ReverseEngineeringDefence.detect_from`).
    """

    key: Tuple[Hashable, ...]
    patterns: np.ndarray
    info: Dict[str, Any]
    seconds: float


class ReverseEngineeringDefence(PoisonFilteringDefenceBase):
    """
    The RE defence (Algorithm 1 of Xiang et al.) as an ART poison-filtering defence: pattern estimation for all ordered
    class pairs, detection by an order-statistic test on reciprocal pattern norms with a Gamma null, and training-set
    cleansing by Eq. (12).

    Defaults that differ from the paper, and why:

    * ``optimizer="normalized"``, ``step_size=0.05``, ``step_growth=1.06`` instead of plain gradient ascent with a
      fixed ``delta=1e-4``. The gradient of J_st varies in scale by orders of magnitude between models and pairs, so a
      fixed delta is either far too slow (thousands of steps: fine on a GPU, not on a CPU) or overshoots. A normalised
      step (``v += delta_k * grad / ||grad||_2``) is steepest ascent in the L2 norm that the statistic measures, so
      each step grows ``||v||_2`` by at most ``delta_k``; ``delta_k = step_size * step_growth**k`` starts fine
      (0.05: finer than an imperceptible pattern's norm, ~0.15 for patterns A/B on MNIST, ~0.6 for C) and grows 6% a
      step so that the non-backdoor pairs (norms 2-10 on mnist-5k) reach ``pi`` within ~50 steps. The detection
      statistic thus keeps a relative resolution of ~6%. ``optimizer="adam"`` is also offered; it gives dense
      patterns of larger L2 norm (every pixel moves by about the learning rate), which raises the cleansing FPR.
      ``optimizer="sgd"``, ``step_size=1e-4``, ``step_growth=1`` is the paper's rule.
    * ``batch_size=8`` images per side and pair per step instead of 256: with 90 pairs one step already feeds
      1,440 images through the network; the normalised step makes the small-batch noise harmless.
    * ``max_iter=80``: the paper has no cap (with the growing step, 80 steps reach norms far beyond any clean pair on
      mnist-5k); pairs that hit it are reported in ``not_converged``.
    * ``normalize_sources=True`` (not in the paper): before the test, each source class's reciprocal statistics are
      multiplied by that source's median pattern norm. The paper's Gamma null treats all K(K-1) statistics as one
      sample, but some source classes are far easier to move to *any* class than others (MNIST's thin 1s need
      patterns about half as large as other digits'); the largest statistic of every putative target then comes from
      that source, and whichever target it reaches most easily looks like an outlier; a real backdoor pair stays an
      outlier within its own source's row. Normalising alone does not bound the false-alarm rate (see
      ``max_norm_ratio``). ``normalize_sources=False`` is the paper's rule; ``benchmarks/reverse_engineering.py`` and
      ``benchmarks/reverse_engineering_calibration.py`` report both.
    * ``max_norm_ratio=0.3`` (not in the paper): a second condition for a detection. A putative target whose
      (adjusted) p-value is below ``theta`` is reported only if its most extreme pattern is at most ``max_norm_ratio``
      times the median pattern norm of the same source class. The reciprocal statistics of one model are not
      independent draws (a source's row and a target's column share the model), so the Gamma null is too narrow for
      the naturally confusable pairs of a clean model (MNIST's 3/5, 4/9, 5/8): on clean CNNs their order statistic
      reaches p < 0.05 on several training seeds with either null. Those natural pairs need patterns of more than
      half their source's median norm, while an implanted backdoor needs a small fraction of it (the threshold and
      both distributions over training seeds are in ``benchmarks/results/reverse_engineering_calibration.md``). The
      ratio is scale-free (a ratio of two pattern norms of the same model), so it does not depend on the image size
      or range. ``max_norm_ratio=None`` is the test alone (the paper's rule with ``normalize_sources=False``).
    * ``cleansing="scaled"`` instead of the paper's Eq. (12) with the estimated pattern itself. The estimate is the
      *smallest* pattern that sends a fraction ``pi`` of the source class to t; a poisoned image carries the whole
      trigger, which can be several times larger (a dense, image-wide trigger most of all: the network crosses the
      boundary long before the whole trigger is added), so ``x - v`` keeps part of the trigger and stays in t. The
      scaled rule subtracts ``alpha * v`` with ``alpha = max(1, cleansing_fraction * min_c d(v_tc) / d(v))``:
      ``min_c d(v_tc)`` is the smallest pattern (in its best direction) that moves the clean images of the target
      class to any other class, so a pattern of a fraction of that size in the backdoor's direction moves few clean
      target images while removing the trigger from the poisoned ones. The fraction is 1/4
      (``cleansing_fraction=0.25``) rather than larger because a localised pattern subtracted from clean target images
      that share its pixels flips more of them as alpha grows. ``cleansing="paper"`` is Eq. (12).
    * A cleansing sanity check (not in the paper). A poisoned image is a genuine image of its source class plus the
      trigger: once the pattern is subtracted, the model sees an ordinary source-class image and classifies it with
      the confidence typical of that class. A clean target-class image that the subtraction flips lands next to a
      decision boundary instead. So for the removed images the margin (top minus second model output) after the
      subtraction is compared with the median margin of the clean training images of their new class; when the median
      of these ratios is below ``min_relative_margin`` (or nearly the whole class is removed) the removed set looks
      like clean target images pushed across a boundary (e.g. a visible trigger that the small-pattern estimate does
      not reproduce, so the estimated pattern is a natural class confusion): the report's ``cleansing_reliable`` is
      False, ``cleansing_notes`` says why, and a ``UserWarning`` is raised; ``is_clean`` is still returned unchanged.
      (A feature-space separability test of removed vs kept images, as first considered, does not work: any set
      selected by the model's own decisions is linearly separable in its features.)

    :param classifier: ART classifier (PyTorch or Keras) trained on the possibly poisoned ``(x_train, y_train)``.
    :param x_train: Training images, in the classifier's layout.
    :param y_train: Training labels, integer or one-hot.
    :param pi: Fraction of class-s training images that must go to t to stop the search for (s, t) (paper: 0.95).
    :param lam: Lagrange multiplier lambda of Eq. (9) (paper: 1).
    :param step_size: First step: L2 length for ``"normalized"``, learning rate for ``"adam"``, delta for ``"sgd"``.
    :param step_growth: Factor by which the step grows after each step (1 = constant, the paper).
    :param optimizer: ``"normalized"`` (default), ``"adam"`` or ``"sgd"`` (plain gradient ascent, the paper's rule).
    :param max_iter: Iteration cap for the pattern search.
    :param batch_size: Images sampled per side (class s and class t) per pair per step.
    :param norm: Pattern size d(v) for the reciprocal statistics: ``"l2"`` (default), ``"l1"`` or ``"linf"``.
    :param theta: Confidence threshold of the detection test (paper: 0.05).
    :param normalize_sources: Scale each source class's reciprocal statistics by the median pattern norm of that
                              source (default; not in the paper, see above), so that a source class that is easy to
                              move anywhere (MNIST's 1s) does not produce a false detection. False = the paper's rule.
    :param max_norm_ratio: Second detection condition: the putative target's most extreme pattern must be at most
                           this fraction of its source class's median pattern norm (default 0.3; ``None`` = the test
                           alone, the paper's rule).
    :param cleansing: ``"scaled"`` (default: subtract the pattern scaled up as described above) or ``"paper"`` (Eq. 12:
                      subtract the estimated pattern).
    :param cleansing_fraction: For ``cleansing="scaled"``: size of the subtracted pattern as a fraction of the smallest
                               pattern that moves the target class's clean images to another class (default 0.25).
    :param min_relative_margin: Cleansing sanity check: the removed images, with the pattern subtracted, must on median
                                keep at least this fraction of the typical margin of their new classes (default 0.5;
                                ``None`` = no check).
    :param max_images_per_pass: Largest number of images sent through the network at once (memory bound).
    :param seed: Seed of the batch sampling (and of the sanity check's cross-validation folds).
    :param verbose: Show a progress bar.
    """

    defence_params = PoisonFilteringDefenceBase.defence_params + [
        "pi", "lam", "step_size", "step_growth", "optimizer", "max_iter", "batch_size", "norm", "theta",
        "normalize_sources", "max_norm_ratio", "cleansing", "cleansing_fraction", "min_relative_margin",
        "max_images_per_pass", "seed"]

    def __init__(self, classifier, x_train: np.ndarray, y_train: np.ndarray, pi: float = 0.95, lam: float = 1.0,
                 step_size: float = 0.05, step_growth: float = 1.06, optimizer: str = "normalized",
                 max_iter: int = 80, batch_size: int = 8, norm: str = "l2", theta: float = 0.05,
                 normalize_sources: bool = True, max_norm_ratio: Optional[float] = 0.3,
                 cleansing: str = "scaled", cleansing_fraction: float = 0.25,
                 min_relative_margin: Optional[float] = 0.5, max_images_per_pass: int = 4096, seed: int = 0,
                 verbose: bool = False, **kwargs: Any) -> None:
        super().__init__(classifier, x_train, y_train)
        self._estimate: Optional[PatternEstimate] = None
        self._reuse_estimate = False
        self._init_params(pi=pi, lam=lam, step_size=step_size, step_growth=step_growth, optimizer=optimizer,
                          max_iter=max_iter, batch_size=batch_size, norm=norm, theta=theta,
                          normalize_sources=normalize_sources, max_norm_ratio=max_norm_ratio, cleansing=cleansing,
                          cleansing_fraction=cleansing_fraction, min_relative_margin=min_relative_margin,
                          max_images_per_pass=max_images_per_pass, seed=seed, verbose=verbose, **kwargs)

    # ------------------------------------------------------------------------------------------------ parameters
    def _check_params(self) -> None:
        check_number("pi", self.pi, low=0, high=1, low_open=True, hint="the paper uses 0.95")
        check_number("lam", self.lam, low=0, hint="the paper uses 1")
        check_number("step_size", self.step_size, low=0, low_open=True)
        check_choice("optimizer", self.optimizer, ("normalized", "adam", "sgd"))
        check_number("step_growth", self.step_growth, low=1, hint="1 = constant step")
        check_int("max_iter", self.max_iter, low=1)
        check_int("batch_size", self.batch_size, low=1, hint="images per side and pair")
        check_choice("norm", self.norm, tuple(_NORMS))
        check_number("theta", self.theta, low=0, high=1, low_open=True, high_open=True, hint="the paper uses 0.05")
        check_bool("normalize_sources", self.normalize_sources)
        if self.max_norm_ratio is not None:
            check_number("max_norm_ratio", self.max_norm_ratio, low=0, low_open=True, hint="or None: the test alone")
        check_choice("cleansing", self.cleansing, ("scaled", "paper"), hint="'paper' = Eq. 12")
        check_number("cleansing_fraction", self.cleansing_fraction, low=0, low_open=True)
        if self.min_relative_margin is not None:
            check_number("min_relative_margin", self.min_relative_margin, low=0, high=1, low_open=True,
                         hint="or None: no sanity check")
        check_int("max_images_per_pass", self.max_images_per_pass, low=2)
        check_int("seed", self.seed, low=0)
        check_bool("verbose", self.verbose)

    # ------------------------------------------------------------------------------------------------ main entry
    def detect_poison(self, **kwargs) -> Tuple[Dict[str, Any], List[int]]:
        """
        Run pattern estimation, detection inference and (if an attack is detected) cleansing.

        :param kwargs: Any of the constructor's parameters, to override them for this run. When only inference and
                       cleansing parameters are given (``theta``, ``norm``, ``normalize_sources``, ``max_norm_ratio``,
                       ``cleansing``, ``cleansing_fraction``, ``min_relative_margin``), the patterns estimated by the
                       previous run are reused, so comparing detection rules costs no second estimation.
        :return: ``(report, is_clean)``: ``is_clean[i] = 0`` for training images flagged as poison, 1 otherwise. The
                 report holds ``detected``, ``p_value``, ``target_class``, ``source_class``, ``suspected_classes``,
                 ``class_p_values`` (Eq. 10, per putative target), ``norm_ratios`` (per putative target, its smallest
                 pattern norm over its source's median), ``dismissed_classes`` (significant in the test but failing
                 ``max_norm_ratio``), ``reciprocal_statistics`` (K x K, NaN diagonal),
                 ``norms``, ``pattern`` (the estimated backdoor pattern, in the input's layout, or ``None``),
                 ``patterns`` (all K x K estimates), ``converged``, ``not_converged`` (pairs that hit ``max_iter``),
                 ``iterations``, ``null_params`` (Gamma shape/scale per putative target), ``cleansing_scale`` (alpha),
                 ``cleansing_reliable`` / ``cleansing_notes`` / ``relative_margin`` (the sanity check),
                 ``nb_flagged``, ``inconclusive`` and
                 ``seconds`` / ``seconds_estimation`` / ``seconds_inference`` / ``seconds_cleansing``.
                 ``inconclusive`` is ``None``, or the reason why RE could not decide (``detected`` is then ``None``,
                 nothing is flagged and a ``UserWarning`` says what to do): the detecting pair did not converge, or no
                 target was detected while more than :data:`MAX_UNCONVERGED_SHARE` of the pairs did not converge
                 (their statistics are bounds that widen the null), or every statistic is the same.
        """
        # reuse the last estimation only when this call changes nothing but inference parameters (a plain second call
        # estimates again: the classifier may have been retrained in place)
        self._reuse_estimate = bool(kwargs) and not set(kwargs) & set(_ESTIMATION_PARAMS)
        try:
            return super().detect_poison(**kwargs)
        finally:
            self._reuse_estimate = False

    def estimation_key(self) -> Tuple[Hashable, ...]:
        """What determines the estimated patterns: the classifier, the training data and the estimation parameters."""
        return (id(self.classifier), id(self.x_train), id(self.y_train)) + tuple(
            getattr(self, name) for name in _ESTIMATION_PARAMS if name != "classifier")

    def estimate(self) -> PatternEstimate:
        """Estimate the patterns of every ordered class pair with the current parameters (the costly step)."""
        start = time.perf_counter()
        x, labels = self._data()
        present = self._present_classes(labels)
        patterns, info = self._estimate_patterns(self._adapter, x, labels, present)
        return PatternEstimate(self.estimation_key(), patterns, info, time.perf_counter() - start)

    def detect_from(self, estimate: PatternEstimate) -> Tuple[Dict[str, Any], List[int]]:
        """
        Detection inference and cleansing on patterns estimated earlier (by :meth:`estimate`, possibly by another
        instance with the same classifier, data and estimation parameters), e.g. to compare detection rules on
        identical patterns. Stores ``report_`` / ``is_clean_`` as :meth:`detect_poison` does.

        :raises ValueError: When ``estimate`` was made with another classifier, other data or other estimation
                            parameters.
        """
        if not isinstance(estimate, PatternEstimate) or estimate.key != self.estimation_key():
            raise ValueError("estimate was not made with this defence's classifier, training data and estimation "
                             f"parameters ({', '.join(_ESTIMATION_PARAMS)}); call estimate() on this defence.")
        return self._store(*self._infer(estimate))

    def _present_classes(self, labels: np.ndarray) -> np.ndarray:
        counts = np.bincount(labels, minlength=self._adapter.nb_classes)
        present = np.flatnonzero(counts > 0)
        if len(present) < 3:
            raise ValueError(f"The RE defence needs training images of at least 3 classes; got classes {present}.")
        return present

    def _detect(self) -> Tuple[Dict[str, Any], np.ndarray]:
        if not (self._reuse_estimate and self._estimate is not None and self._estimate.key == self.estimation_key()):
            self._estimate = self.estimate()
        return self._infer(self._estimate)

    def _infer(self, estimate: PatternEstimate) -> Tuple[Dict[str, Any], np.ndarray]:
        """Lines 9-17 of Algorithm 1 and the cleansing, on given patterns; ``seconds`` counts the estimation too."""
        self._estimate = estimate
        adapter = self._adapter
        nb_classes = adapter.nb_classes
        x, labels = self._data()
        present = self._present_classes(labels)
        patterns, info, seconds_estimation = estimate.patterns, estimate.info, estimate.seconds
        t_est = time.perf_counter()
        start = t_est - seconds_estimation  # a reused estimation still counts in "seconds"
        order = _NORMS[self.norm]
        flat = patterns.reshape(nb_classes, nb_classes, -1)
        norms = np.linalg.norm(flat, ord=order, axis=2)
        valid = np.zeros((nb_classes, nb_classes), bool)
        valid[np.ix_(present, present)] = True
        np.fill_diagonal(valid, False)
        norms = np.where(valid, norms, np.nan)
        recip = np.where(valid, 1.0 / np.maximum(np.nan_to_num(norms, nan=1.0), 1e-12), np.nan)
        if self.normalize_sources:
            # divide each source's norms by their median: removes "easy source class" effects (e.g. MNIST's thin 1s)
            median = np.ones((nb_classes, 1))
            median[present, 0] = np.nanmedian(norms[present], axis=1)  # absent classes' rows stay all-NaN
            recip = recip * median
        inference = self._inference(recip, present, norms)
        t_inf = time.perf_counter()

        is_clean = np.ones(len(x), dtype=int)
        pattern = None
        target, source = inference["target_class"], None
        cleansing: Dict[str, Any] = {"cleansing_scale": None, "cleansing_reliable": None, "cleansing_notes": "",
                                     "relative_margin": float("nan")}
        inconclusive = None
        not_conv = [(int(s), int(t)) for s, t in zip(*np.nonzero(valid & ~info["converged"]))]
        if inference["detected"]:
            source = int(np.nanargmax(recip[:, target]))
            pattern = patterns[source, target].copy()
            # the detecting pair never reached pi: its norm is only a lower bound of what moving the source takes, so
            # the anomaly that detected it may not exist. Say so rather than act on it (nothing is flagged).
            if not bool(info["converged"][source, target]):
                inconclusive = (f"the detecting pair {source}->{target} did not reach pi={self.pi} within "
                                f"max_iter={self.max_iter}")
        elif inference["degenerate"]:
            inconclusive = ("every pair's statistic is the same (no Gamma null can be fitted): "
                            f"{len(not_conv)} of {int(valid.sum())} pairs hit max_iter={self.max_iter}")
        elif len(not_conv) > MAX_UNCONVERGED_SHARE * valid.sum():
            # unconverged pairs' statistics are upper bounds: they widen the null and can hide a real outlier
            inconclusive = (f"{len(not_conv)} of {int(valid.sum())} pairs did not reach pi={self.pi} within "
                            f"max_iter={self.max_iter}, so the null distribution is made of bounds, not measurements")
        if inference["detected"] and not inconclusive:
            flagged, scale = self._cleanse(adapter, x, labels, target, pattern, norms, present)
            is_clean[flagged] = 0
            cleansing.update(self._check_cleansing(adapter, x, labels, target, flagged, pattern, scale))
            cleansing["cleansing_scale"] = scale
        seconds = time.perf_counter() - start

        report: Dict[str, Any] = {
            "detected": bool(inference["detected"]),
            "p_value": inference["p_value"],
            "target_class": target,
            "source_class": source,
            "suspected_classes": inference["suspected_classes"],
            "class_p_values": inference["class_p_values"],
            "null_params": inference["null_params"],
            "reciprocal_statistics": recip,
            "norms": norms,
            "pattern": pattern,
            "patterns": patterns,
            "converged": info["converged"] & valid,
            "not_converged": not_conv,
            "iterations": info["iterations"],
            "misclassification_fraction": info["rho"],
            "nb_steps": info["nb_steps"],
            "nb_flagged": int((is_clean == 0).sum()),
            "flagged_by_class": {int(c): int(((is_clean == 0) & (labels == c)).sum()) for c in present},
            "theta": float(self.theta),
            "normalize_sources": bool(self.normalize_sources),
            "max_norm_ratio": None if self.max_norm_ratio is None else float(self.max_norm_ratio),
            "norm_ratios": inference["norm_ratios"],
            "dismissed_classes": inference["dismissed_classes"],
            "cleansing": self.cleansing,
            **cleansing,
            "seconds": seconds,
            "seconds_estimation": seconds_estimation,
            "seconds_inference": t_inf - t_est,
            "seconds_cleansing": seconds - (t_inf - start),
            "notes": (f"{len(not_conv)} of {int(valid.sum())} pairs hit max_iter={self.max_iter}" if not_conv else ""),
        }
        report["inconclusive"] = inconclusive
        if inconclusive:
            report["detected"] = None
            report["notes"] = f"inconclusive: {inconclusive}; " + report["notes"]
            if inference["detected"]:
                msg = (f"RE is inconclusive: the test points at class {target}, but the pattern of its detecting pair "
                       f"({source}->{target}) did not move pi={self.pi} of class {source} within "
                       f"max_iter={self.max_iter}, so its small norm is a lower bound, not a measurement. Nothing is "
                       "flagged; raise max_iter (or step_size) and run again.")
            else:
                msg = (f"RE is inconclusive: {inconclusive}; it cannot say that there is no backdoor either. Raise "
                       "max_iter (or step_size) and run again.")
            logger.warning(msg)
            warnings.warn(msg, UserWarning, stacklevel=3)
        if not_conv:
            logger.warning("RE: %d of %d class pairs did not reach pi=%.2f within max_iter=%d; their reciprocal "
                           "statistics are upper bounds.", len(not_conv), int(valid.sum()), self.pi, self.max_iter)
        logger.info("RE: detected=%s p=%.3g target=%s source=%s flagged=%d in %.1fs (estimation %.1fs).",
                    report["detected"], report["p_value"], target, source, report["nb_flagged"], seconds,
                    report["seconds_estimation"])
        return report, is_clean

    # ------------------------------------------------------------------------------------------------ internals
    def _estimate_patterns(self, adapter, x: np.ndarray, labels: np.ndarray, present: np.ndarray):
        """Lines 2-8 of Algorithm 1 for all ordered pairs of present classes, batched over pairs."""
        nb_classes = adapter.nb_classes
        img_shape = x.shape[1:]
        lo, hi = self._adapter.clip_values
        rng = np.random.default_rng(self.seed)
        b = int(self.batch_size)
        pairs = np.array([(s, t) for s in present for t in present if s != t], dtype=np.int64)
        n_pairs = len(pairs)
        # class members as a padded matrix, to sample every pair's batch at once
        members = [np.flatnonzero(labels == c) for c in range(nb_classes)]
        counts = np.array([len(m) for m in members])
        padded = np.zeros((nb_classes, max(1, counts.max())), np.int64)
        for c, m in enumerate(members):
            padded[c, :len(m)] = m

        v = np.zeros((n_pairs,) + img_shape, np.float32)
        m1 = np.zeros_like(v)
        m2 = np.zeros_like(v)
        steps = np.zeros(n_pairs, np.int64)
        done = np.zeros(n_pairs, bool)
        rho = np.zeros(n_pairs)
        iterations = np.zeros(n_pairs, np.int64)
        beta1, beta2, eps = 0.9, 0.999, 1e-8

        # line 4: fraction already going to t at v = 0
        pred0 = adapter.predict_labels(x)
        for k, (s, t) in enumerate(pairs):
            rho[k] = float(np.mean(pred0[members[s]] == t))
        done |= rho >= self.pi

        bar = progress(range(int(self.max_iter)), self.verbose, desc="RE pattern estimation", unit="step")
        nb_steps = 0
        for it in bar:
            active = np.flatnonzero(~done)
            if len(active) == 0:
                break
            nb_steps = it + 1
            n_act = len(active)
            s_cls, t_cls = pairs[active, 0], pairs[active, 1]
            idx_s = padded[s_cls[:, None], (rng.random((n_act, b)) * counts[s_cls][:, None]).astype(np.int64)]
            idx_t = padded[t_cls[:, None], (rng.random((n_act, b)) * counts[t_cls][:, None]).astype(np.int64)]
            va = v[active][:, None]
            xs = x[idx_s] + va                       # (n_act, b, ...) images of class s plus the pattern
            xt = x[idx_t] - va                       # images of class t minus the pattern
            ms = ((xs > lo) & (xs < hi)).astype(np.float32)   # subgradient of the clipping
            mt = ((xt > lo) & (xt < hi)).astype(np.float32)
            batch = np.concatenate([np.clip(xs, lo, hi).reshape((-1,) + img_shape),
                                    np.clip(xt, lo, hi).reshape((-1,) + img_shape)])
            lab = np.concatenate([np.repeat(t_cls, b), np.repeat(t_cls, b)])
            comp = np.concatenate([np.zeros(n_act * b, bool), np.ones(n_act * b, bool)])
            logp, grad = self._log_prob_and_grad(adapter, batch, lab, comp)
            g_s = grad[:n_act * b].reshape(xs.shape) * ms
            g_t = grad[n_act * b:].reshape(xt.shape) * mt
            # dJ/dv: s-side d log p_t(clip(x + v))/dv = +grad; t-side d log(1 - p_t(clip(x - v)))/dv = -grad
            g = self.lam * g_s.mean(axis=1) - g_t.mean(axis=1)

            # stopping rule (lines 5/7) at the current v: check all of D_s only where the sampled batch reaches pi
            frac_batch = (np.exp(logp[:n_act * b]).reshape(n_act, b) > 0.5).mean(axis=1)
            cand = active[frac_batch >= self.pi]
            if len(cand):
                rho[cand] = self._fractions(adapter, x, members, pairs[cand], v[cand], lo, hi)
                newly = cand[rho[cand] >= self.pi]
                done[newly] = True
                iterations[newly] = it
            upd = ~done[active]
            act_u, g = active[upd], g[upd]
            if len(act_u):
                if self.optimizer == "adam":
                    steps[act_u] += 1
                    m1[act_u] = beta1 * m1[act_u] + (1 - beta1) * g
                    m2[act_u] = beta2 * m2[act_u] + (1 - beta2) * g * g
                    bc1 = (1 - beta1 ** steps[act_u]).reshape((-1,) + (1,) * len(img_shape))
                    bc2 = (1 - beta2 ** steps[act_u]).reshape((-1,) + (1,) * len(img_shape))
                    lr = (self.step_size * float(self.step_growth) ** (steps[act_u] - 1)).reshape(bc1.shape)
                    v[act_u] += lr * (m1[act_u] / bc1) / (np.sqrt(m2[act_u] / bc2) + eps)
                else:
                    steps[act_u] += 1
                    lr = (self.step_size * float(self.step_growth) ** (steps[act_u] - 1))
                    if self.optimizer == "normalized":  # steepest ascent in L2: a step of L2 length lr
                        gn = np.sqrt(np.sum(g.reshape(len(g), -1).astype(np.float64) ** 2, axis=1))
                        g = g / np.maximum(gn, 1e-30).reshape((-1,) + (1,) * len(img_shape)).astype(np.float32)
                    v[act_u] += lr.reshape((-1,) + (1,) * len(img_shape)).astype(np.float32) * g
                # a pattern larger than the pixel range changes nothing more
                v[act_u] = np.clip(v[act_u], lo - hi, hi - lo)
            if self.verbose:
                bar.set_postfix(done=f"{int(done.sum())}/{n_pairs}")
        # final check for pairs still open at the cap
        open_ = np.flatnonzero(~done)
        if len(open_):
            rho[open_] = self._fractions(adapter, x, members, pairs[open_], v[open_], lo, hi, early_exit=False)
            newly = open_[rho[open_] >= self.pi]
            done[newly] = True
            iterations[newly] = nb_steps
            iterations[np.flatnonzero(~done)] = nb_steps

        patterns = np.zeros((nb_classes, nb_classes) + img_shape, np.float32)
        patterns[pairs[:, 0], pairs[:, 1]] = v
        converged = np.zeros((nb_classes, nb_classes), bool)
        converged[pairs[:, 0], pairs[:, 1]] = done
        rho_m = np.full((nb_classes, nb_classes), np.nan)
        rho_m[pairs[:, 0], pairs[:, 1]] = rho
        it_m = np.zeros((nb_classes, nb_classes), np.int64)
        it_m[pairs[:, 0], pairs[:, 1]] = iterations
        return patterns, {"converged": converged, "rho": rho_m, "iterations": it_m, "nb_steps": nb_steps}

    def _log_prob_and_grad(self, adapter, batch, lab, comp):
        """The adapter's batched log-probabilities and input gradients, in chunks of ``max_images_per_pass``."""
        n = len(batch)
        chunk = int(self.max_images_per_pass)
        if n <= chunk:
            return adapter.log_prob_and_grad(batch, lab, complement=comp)
        outs = [adapter.log_prob_and_grad(batch[i:i + chunk], lab[i:i + chunk], complement=comp[i:i + chunk])
                for i in range(0, n, chunk)]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    def _fractions(self, adapter, x, members, pairs, patterns, lo, hi, early_exit: bool = True) -> np.ndarray:
        """
        Fraction of all class-s images sent to t by their pattern, for several pairs in batched predictions.

        With ``early_exit`` the images are predicted in chunks and a pair is dropped as soon as it has more failures
        than a fraction ``pi`` allows: its returned fraction (over the images seen) is then below ``pi`` too, so the
        stopping decision is exactly that of the full count, at a fraction of the predictions (most candidate pairs
        are still well short of ``pi``).
        """
        sizes = np.array([len(members[s]) for s, _ in pairs])
        allowed = sizes * (1.0 - float(self.pi)) + 1e-6  # a pair with more failures can no longer reach pi
        hits, seen = np.zeros(len(pairs)), np.zeros(len(pairs))
        alive = np.ones(len(pairs), bool)
        chunk = max(16, int(np.ceil(sizes.max() / 8))) if early_exit else int(sizes.max())
        for begin in range(0, int(sizes.max()), chunk):
            act = np.flatnonzero(alive & (sizes > begin))
            if len(act) == 0:
                break
            parts = [members[pairs[k][0]][begin:begin + chunk] for k in act]
            imgs = np.concatenate([np.clip(x[idx] + patterns[k][None], lo, hi) for k, idx in zip(act, parts)])
            pred = adapter.predict_labels(imgs, batch_size=int(self.max_images_per_pass))
            bounds = np.cumsum([0] + [len(idx) for idx in parts])
            for j, k in enumerate(act):
                hits[k] += np.sum(pred[bounds[j]:bounds[j + 1]] == pairs[k][1])
                seen[k] += bounds[j + 1] - bounds[j]
            if early_exit:
                alive &= (seen - hits) <= allowed
        return hits / np.maximum(seen, 1)

    def _inference(self, recip: np.ndarray, present: np.ndarray, norms: Optional[np.ndarray] = None) -> Dict[str, Any]:
        """
        Lines 9-17 of Algorithm 1: Gamma null per putative target, Eq. (10) and Eq. (11); then (not in the paper) the
        effect-size condition ``max_norm_ratio`` on the significant targets, when ``norms`` is given.
        """
        from scipy import stats

        k_present = len(present)
        class_pv: Dict[int, float] = {}
        null_params: Dict[int, Tuple[float, float]] = {}
        nan = float("nan")
        degenerate = {"detected": False, "p_value": nan, "target_class": None, "suspected_classes": [],
                      "class_p_values": {int(c): nan for c in present}, "null_params": {}, "norm_ratios": {},
                      "dismissed_classes": [], "degenerate": True}
        for c in present:
            others = np.array([recip[s, t] for s in present for t in present if s != t and t != c])
            others = others[np.isfinite(others)]
            col = recip[present, c]
            r_max = float(np.nanmax(col))
            # Gamma with location fixed at 0: reciprocal norms are positive, and a free location makes the
            # 3-parameter MLE degenerate (the location runs up to the sample minimum)
            if len(others) < 2 or not np.ptp(others) > 1e-6 * float(np.max(others)):
                return degenerate  # (nearly) identical statistics, e.g. every pair stopped after the same steps
            with np.errstate(all="ignore"):
                try:
                    shape, _, scale = stats.gamma.fit(others, floc=0)
                except (ValueError, RuntimeError, FloatingPointError):  # the MLE has no root: no null to test with
                    return degenerate
            sf = float(stats.gamma.sf(r_max, shape, loc=0, scale=scale))
            # Eq. (10): 1 - G(r_max)^(K-1), computed from the survival function without cancellation
            pv = float(-np.expm1((k_present - 1) * np.log1p(-sf))) if sf < 1 else 1.0
            class_pv[int(c)] = pv
            null_params[int(c)] = (float(shape), float(scale))
        pv_min = min(class_pv.values())
        p_value = float(-np.expm1(k_present * np.log1p(-pv_min))) if pv_min < 1 else 1.0
        adjusted = {c: float(-np.expm1(k_present * np.log1p(-p))) if p < 1 else 1.0 for c, p in class_pv.items()}
        significant = sorted([c for c, p in adjusted.items() if p < self.theta], key=lambda c: class_pv[c])
        ratios = self._norm_ratios(norms, present) if norms is not None else {}
        if self.max_norm_ratio is not None and norms is not None:
            suspected = [c for c in significant if ratios[c] <= float(self.max_norm_ratio)]
        else:
            suspected = significant
        dismissed = [c for c in significant if c not in suspected]
        if dismissed:
            logger.info("RE: putative target(s) %s pass the test (p < %.3g) but their smallest pattern is %s of its "
                        "source's median norm (> max_norm_ratio=%.3g): a natural class confusion, not reported.",
                        dismissed, self.theta, ", ".join(f"{ratios[c]:.2f}" for c in dismissed),
                        float(self.max_norm_ratio))
        detected = bool(suspected)
        target = int(suspected[0]) if detected else None
        return {"detected": detected, "p_value": p_value, "target_class": target, "suspected_classes": suspected,
                "class_p_values": class_pv, "null_params": null_params, "norm_ratios": ratios,
                "dismissed_classes": dismissed, "degenerate": False}

    @staticmethod
    def _norm_ratios(norms: np.ndarray, present: np.ndarray) -> Dict[int, float]:
        """Per putative target c: min over sources s of d(v_sc) / median_t d(v_st) (the effect size of the column)."""
        ratio = np.full(norms.shape, np.nan)
        ratio[present] = norms[present] / np.nanmedian(norms[present], axis=1, keepdims=True)
        return {int(c): float(np.nanmin(ratio[present, c])) for c in present}

    def _cleanse(self, adapter, x: np.ndarray, labels: np.ndarray, target: int, pattern: np.ndarray,
                 norms: np.ndarray, present: np.ndarray) -> Tuple[np.ndarray, float]:
        """
        Eq. (12) with the pattern scaled by ``alpha`` (``cleansing="scaled"``, see the class notes; ``alpha = 1`` for
        ``"paper"``): the indices of the target-class images with ``f(clip(x - alpha * v)) != t``, and ``alpha``.
        """
        members = np.flatnonzero(labels == target)
        scale = 1.0
        if self.cleansing == "scaled":
            size = float(np.linalg.norm(pattern.ravel(), ord=_NORMS[self.norm]))
            outgoing = norms[target, present[present != target]]
            outgoing = outgoing[np.isfinite(outgoing)]
            if size > 0 and len(outgoing):
                scale = max(1.0, float(self.cleansing_fraction) * float(np.min(outgoing)) / size)
        lo, hi = self._adapter.clip_values
        removed = np.clip(x[members] - scale * pattern[None], lo, hi)
        pred = adapter.predict_labels(removed, batch_size=int(self.max_images_per_pass))
        return members[pred != target], scale

    def _check_cleansing(self, adapter, x: np.ndarray, labels: np.ndarray, target: int, flagged: np.ndarray,
                         pattern: np.ndarray, scale: float) -> Dict[str, Any]:
        """
        The cleansing sanity check (see the class notes). For every removed image, the margin (largest minus second
        largest model output) of ``clip(x - alpha * v)`` divided by the median margin of the clean training images of
        its new class (non-target training images the model classifies as their label); the cleansing is unreliable
        when the median of these relative margins is below ``min_relative_margin``, or when nearly the whole class is
        removed.
        """
        out: Dict[str, Any] = {"cleansing_reliable": None, "cleansing_notes": "", "relative_margin": float("nan")}
        if self.min_relative_margin is None:
            return out
        members = np.flatnonzero(labels == target)
        n_removed, n_kept = len(flagged), len(members) - len(flagged)
        min_count = 10
        if n_removed < min_count:
            out["cleansing_notes"] = f"{n_removed} images removed: too few to check the cleansing"
            return out
        note = ""
        if n_kept < min_count:
            note = (f"the cleansing removed {n_removed} of the {len(members)} images of class {target}, nearly the "
                    "whole class: the subtracted pattern moves the class's clean images too")
        else:
            lo, hi = self._adapter.clip_values
            batch = int(self.max_images_per_pass)
            after = adapter.classifier.predict(np.clip(x[flagged] - scale * pattern[None], lo, hi).astype(np.float32),
                                               batch_size=batch)
            others = np.flatnonzero(labels != target)
            outputs = adapter.classifier.predict(x[others].astype(np.float32), batch_size=batch)
            correct = outputs.argmax(axis=1) == labels[others]
            typical = np.full(adapter.nb_classes, np.nan)
            for c in np.unique(labels[others]):
                sel = correct & (labels[others] == c)
                if sel.any():
                    typical[c] = np.median(_margin(outputs[sel]))
            rel = _margin(after) / typical[after.argmax(axis=1)]
            rel = rel[np.isfinite(rel)]
            if len(rel) == 0:
                out["cleansing_notes"] = "the removed images go to classes without reference images: not checked"
                return out
            out["relative_margin"] = float(np.median(rel))
            if out["relative_margin"] < float(self.min_relative_margin):
                note = (f"the {n_removed} images removed from class {target} ({n_removed / len(members):.0%} of it) "
                        f"leave it only barely once the pattern is subtracted (median margin "
                        f"{out['relative_margin']:.2f} of the typical margin of their new classes < "
                        f"min_relative_margin={float(self.min_relative_margin):.2f}): they look like clean images of "
                        f"class {target} pushed across a decision boundary, not like poisoned images of another class "
                        "(e.g. a trigger unlike the small additive patterns RE estimates)")
        out["cleansing_reliable"] = not note
        if note:
            out["cleansing_notes"] = note + "; is_clean is returned unchanged, but do not rely on it"
            warnings.warn(f"RE cleansing unreliable: {out['cleansing_notes']}.", UserWarning)
        return out


def _margin(outputs: np.ndarray) -> np.ndarray:
    """Largest minus second-largest output per row (logits or probabilities, as the model gives them)."""
    top = np.sort(outputs, axis=1)
    return top[:, -1] - top[:, -2]
