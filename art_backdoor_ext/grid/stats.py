"""
Statistics over seeds for the grid's tables: a mean with a 95% bootstrap confidence interval for continuous metrics
(accuracy, ASR, TPR, FPR), a Wilson score interval for rates over seeds (detection rate on poisoned models, false-alarm
rate on clean ones), and threshold-free scores (AUROC, TPR at a fixed FPR) for defences that give every training image
a suspicion score.

Wilson (1927), "Probable inference, the law of succession, and statistical inference", JASA 22(158); the bootstrap is
SciPy's (``scipy.stats.bootstrap``, percentile method, seeded locally).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["wilson_interval", "bootstrap_ci", "mean_ci", "rate_ci", "threshold_free_scores", "tpr_at_fpr"]


def _check_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}.")
    return float(confidence)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> Tuple[float, float]:
    """
    Wilson score interval of a binomial proportion ``successes / trials``.

    :return: ``(low, high)``; ``(nan, nan)`` when ``trials`` is 0.
    """
    from scipy.stats import norm

    confidence = _check_confidence(confidence)
    if isinstance(successes, bool) or isinstance(trials, bool) or int(successes) != successes \
            or int(trials) != trials or not 0 <= successes <= trials:
        raise ValueError(f"successes and trials must be integers with 0 <= successes <= trials, got {successes!r} and "
                         f"{trials!r}.")
    if trials == 0:
        return float("nan"), float("nan")
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> Tuple[float, float]:
    """
    Percentile bootstrap confidence interval of the mean (``scipy.stats.bootstrap``, a local generator seeded with
    ``seed``, so the interval is reproducible). ``nan`` entries are ignored.

    :return: ``(low, high)``: ``(nan, nan)`` with fewer than two values, ``(v, v)`` when all values are equal.
    """
    from scipy.stats import bootstrap

    confidence = _check_confidence(confidence)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples!r}.")
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return float("nan"), float("nan")
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=int(n_resamples), method="percentile",
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_ci(values: Sequence[Optional[float]], confidence: float = 0.95, seed: int = 0) -> Dict[str, Any]:
    """``{"mean", "low", "high", "n", "values"}`` of a continuous metric over seeds (nan/None ignored)."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    low, high = bootstrap_ci(finite, confidence=confidence, seed=seed)
    return {"mean": float(np.mean(finite)) if finite else float("nan"), "low": low, "high": high, "n": len(finite),
            "values": [None if v is None or not np.isfinite(v) else float(v) for v in values]}


def rate_ci(outcomes: Sequence[Optional[bool]], confidence: float = 0.95) -> Dict[str, Any]:
    """``{"k", "n", "rate", "low", "high"}`` of yes/no outcomes over seeds with a Wilson interval (None ignored)."""
    known = [bool(o) for o in outcomes if o is not None]
    k, n = sum(known), len(known)
    low, high = wilson_interval(k, n, confidence)
    return {"k": k, "n": n, "rate": k / n if n else float("nan"), "low": low, "high": high}


def tpr_at_fpr(scores: np.ndarray, is_poison: np.ndarray, fpr: float) -> float:
    """The highest TPR reached at a false-positive rate of at most ``fpr`` (scores: higher = more suspicious)."""
    from sklearn.metrics import roc_curve

    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr!r}.")
    fprs, tprs, _ = roc_curve(np.asarray(is_poison, bool), np.asarray(scores, float))
    ok = fprs <= fpr + 1e-12
    return float(tprs[ok].max()) if ok.any() else 0.0


def threshold_free_scores(scores: Sequence[float], is_poison: Sequence[bool]) -> Optional[Dict[str, float]]:
    """
    AUROC and TPR at 1% and 5% FPR of per-image suspicion scores (higher = more suspicious) against the ground truth;
    ``None`` when the set has no poisoned or no clean image (the scores are undefined).
    """
    from sklearn.metrics import roc_auc_score

    scores = np.asarray(scores, dtype=float).ravel()
    is_poison = np.asarray(is_poison, bool).ravel()
    if len(scores) != len(is_poison):
        raise ValueError(f"scores ({len(scores)}) and is_poison ({len(is_poison)}) must have the same length.")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite.")
    if is_poison.all() or not is_poison.any():
        return None
    return {"auroc": float(roc_auc_score(is_poison, scores)), "tpr_at_1pct_fpr": tpr_at_fpr(scores, is_poison, 0.01),
            "tpr_at_5pct_fpr": tpr_at_fpr(scores, is_poison, 0.05)}
