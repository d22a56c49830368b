"""
Metrics every backdoor experiment reports: clean accuracy, attack success rate (ASR), filtering TPR/FPR, and a small
record type for one defence's outcome.

Definitions follow the RE paper (Xiang et al., https://arxiv.org/abs/2010.07489): TPR = poisoned training images
flagged / all poisoned; FPR (target) = clean images of the target class flagged / clean images of the target class;
FPR (overall) = clean images flagged / all clean images.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import numpy as np

from art_backdoor_ext.utils import as_class_list, check_int, check_number, check_seed, to_labels


def _adapter(classifier):
    from art_backdoor_ext.estimators import get_adapter

    return get_adapter(classifier)


def accuracy(classifier, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Clean accuracy of an ART classifier on ``(x, y)`` (integer or one-hot labels)."""
    check_int("batch_size", batch_size, low=1)
    adapter = _adapter(classifier)
    labels = to_labels(y, adapter.nb_classes)
    if len(x) != len(labels):
        raise ValueError(f"x has {len(x)} images but y has {len(labels)} labels.")
    if len(labels) == 0:
        raise ValueError("Cannot compute accuracy on an empty set.")
    x = adapter.check_input(x, "x")
    return float(np.mean(adapter.predict_labels(x, batch_size) == labels))


def attack_success_rate(
    classifier,
    x: np.ndarray,
    y: np.ndarray,
    trigger: Callable[[np.ndarray], np.ndarray],
    target: int,
    sources: Optional[Iterable[int]] = None,
    batch_size: int = 512,
) -> float:
    """
    Fraction of source-class test images that the classifier assigns to ``target`` once the trigger is added.

    :param trigger: ``f(x) -> x`` adding the trigger (a perturbation function, or an attack's ``poison``-like callable).
    :param sources: Source classes (``None``: every class but the target). Images of the target class never count.
    """
    check_int("batch_size", batch_size, low=1)
    adapter = _adapter(classifier)
    nb_classes = adapter.nb_classes
    labels = to_labels(y, nb_classes)
    if len(x) != len(labels):
        raise ValueError(f"x has {len(x)} images but y has {len(labels)} labels.")
    if isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer)) \
            or not 0 <= target < nb_classes:
        raise ValueError(f"target must be a class index in [0, {nb_classes}), got {target!r}.")
    if not callable(trigger):
        raise ValueError(f"trigger must be a callable f(x) -> x, got {type(trigger).__name__}.")
    sources = as_class_list(sources, nb_classes, exclude=target)
    mask = np.isin(labels, sources) & (labels != target)
    if not mask.any():
        raise ValueError(f"No test images of the source classes {sources}.")
    x = adapter.check_input(x, "x")
    x_triggered = adapter.check_input(trigger(np.array(x[mask], copy=True)), "trigger(x)")
    if x_triggered.shape != x[mask].shape:
        raise ValueError(f"trigger(x) changed the batch's shape from {x[mask].shape} to {x_triggered.shape}.")
    return float(np.mean(adapter.predict_labels(x_triggered, batch_size) == target))


@dataclasses.dataclass
class FilteringRates:
    """TPR, FPR on the target class and FPR overall of a training-set filter."""

    tpr: float
    fpr_target: float
    fpr: float
    nb_flagged: int


def filtering_rates(is_clean: Sequence[int], is_poison: Sequence[bool], y: np.ndarray,
                    target: Optional[int] = None) -> FilteringRates:
    """
    Compare a defence's ``is_clean`` (1 = kept, 0 = flagged) with the ground truth ``is_poison``.

    Rates with an empty denominator are ``nan`` (e.g. TPR on a clean training set).

    :param y: Labels of the (poisoned) training set, integer or one-hot; used for the target-class FPR.
    :param target: Target class; ``None`` gives ``nan`` for the target-class FPR.
    """
    is_clean = np.asarray(is_clean)
    is_poison = np.asarray(is_poison)
    labels = to_labels(y)
    if not (is_clean.ndim == is_poison.ndim == 1) or not (len(is_clean) == len(is_poison) == len(labels)):
        raise ValueError(f"is_clean ({is_clean.shape}), is_poison ({is_poison.shape}) and y ({len(labels)}) must be "
                         "1-D with one entry per training image.")
    if not np.isin(is_clean, (0, 1)).all():
        raise ValueError("is_clean must contain only 0 (flagged) and 1 (clean).")
    if not np.isin(is_poison, (0, 1)).all():
        raise ValueError("is_poison must contain only booleans (or 0/1).")
    if target is not None and (isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer))
                               or target < 0):
        raise ValueError(f"target must be None or a class index >= 0, got {target!r}.")
    nb_columns = np.shape(y)[1] if np.ndim(y) == 2 and np.shape(y)[1] > 1 else None
    if target is not None and nb_columns and target >= nb_columns:
        raise ValueError(f"target {target} is not a class of y (one-hot with {nb_columns} classes); pass the attack's "
                         "target class, or target=None for no target-class FPR.")
    is_clean, is_poison = is_clean.astype(int), is_poison.astype(bool)
    flagged = is_clean == 0

    def rate(num_mask: np.ndarray, den_mask: np.ndarray) -> float:
        den = int(den_mask.sum())
        return float((num_mask & den_mask).sum() / den) if den else float("nan")

    clean = ~is_poison
    fpr_target = rate(flagged, clean & (labels == target)) if target is not None else float("nan")
    return FilteringRates(tpr=rate(flagged, is_poison), fpr_target=fpr_target, fpr=rate(flagged, clean),
                          nb_flagged=int(flagged.sum()))


@dataclasses.dataclass
class DefenceResult:
    """One row of a comparison table: what a defence concluded and how well it filtered."""

    defence: str
    detected: Optional[bool]
    target_class: Optional[int]
    tpr: float = float("nan")
    fpr_target: float = float("nan")
    fpr: float = float("nan")
    seconds: float = float("nan")
    clean_accuracy: float = float("nan")
    asr: float = float("nan")
    notes: str = ""
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)
    report: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    """The defence's raw report (arrays included); not written by :meth:`as_dict`."""
    is_clean: Optional[np.ndarray] = dataclasses.field(default=None, repr=False, compare=False)
    """A filtering defence's marking of the training set (1 = kept); not written by :meth:`as_dict`."""

    def as_dict(self) -> Dict[str, Any]:
        """A JSON-safe dict of the table fields (numpy scalars converted; the raw report and marking left out)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("report", "is_clean")}
        return to_json_safe(fields)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "DefenceResult":
        """The row back from :meth:`as_dict` (e.g. a grid result read from its cache); ``None`` rates become NaN."""
        if not isinstance(data, dict) or "defence" not in data:
            raise ValueError(f"data must be a dict written by DefenceResult.as_dict(), got {type(data).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)} - {"report", "is_clean"}
        kwargs = {k: v for k, v in data.items() if k in names}
        for k in ("tpr", "fpr_target", "fpr", "seconds", "clean_accuracy", "asr"):
            if kwargs.get(k) is None:
                kwargs[k] = float("nan")
        kwargs["extra"] = dict(kwargs.get("extra") or {})
        return cls(**kwargs)


def to_json_safe(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays turned into Python numbers and lists (anything else unknown: ``str``)."""
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


# ---------------------------------------------------------------------------------------------- latent separability
@dataclasses.dataclass
class LatentSeparability:
    """
    How separable poisoned latents are from clean latents of the target class (Tan & Shokri,
    https://arxiv.org/abs/1905.13409, Tables 4-5): the adjusted Rand index of activation clustering's 2-means, the
    fraction of poison spectral signatures leaves, and two threshold-free AUROCs.
    """

    ari: float
    """Adjusted Rand index of 2-means on the PCA-reduced latents against the poison ground truth (1 = AC separates)."""
    ss_remaining: float
    """Fraction of the poisoned images left after removing the ``eps_multiplier * eps`` top spectral scores."""
    ss_auroc: float
    """AUROC of the spectral-signature score (0.5 = no better than chance)."""
    probe_auroc: float
    """Cross-validated AUROC of a logistic-regression probe on the latents (0.5 = no better than chance)."""

    def as_dict(self) -> Dict[str, float]:
        return dataclasses.asdict(self)


def mad_anomaly_index(values: Sequence[float]) -> np.ndarray:
    """
    Signed anomaly index of each value, ``(v - median) / (1.4826 * MAD)`` (median absolute deviation with the normal
    consistency constant), as Neural Cleanse (Wang et al., S&P 2019, Section IV) applies it to the classes' reversed
    mask norms: an index below -2 marks an anomalously small norm. When the MAD is 0 (at least half the values are
    equal) the index is undefined and every entry is ``nan``, never a guess.
    """
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        raise ValueError("values must not be empty.")
    median = np.median(v)
    mad = 1.4826 * np.median(np.abs(v - median))
    return (v - median) / mad if mad > 0 else np.full(v.shape, np.nan)


def spectral_scores(features: np.ndarray) -> np.ndarray:
    """Spectral-signature outlier scores: squared projection of the centred features on their top singular vector."""
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    f = f - f.mean(axis=0)
    _, _, vt = np.linalg.svd(f, full_matrices=False)
    return (f @ vt[0]) ** 2


def latent_separability(features: np.ndarray, is_poison: Sequence[bool], nb_dims: int = 10,
                        eps_multiplier: float = 1.5, seed: int = 0) -> LatentSeparability:
    """
    Separability of the poisoned latents of one class (the target class) from its clean latents.

    * ``ari``: activation clustering's step (Chen et al.: PCA to ``nb_dims``, 2-means; the paper reduces with ICA)
      scored with the adjusted Rand index against ``is_poison``;
    * ``ss_remaining``: spectral signatures (Tran et al.) removing the ``eps_multiplier * eps`` fraction with the top
      scores, ``eps`` the true poison fraction (the paper's Table 4 setting); the fraction of poison kept;
    * ``ss_auroc`` and ``probe_auroc``: AUROCs of the spectral score and of a 5-fold cross-validated logistic-regression
      probe on standardised latents.

    :param features: Latents ``(N, D)`` of the images labelled as the target class.
    :param is_poison: Ground truth for those images (at least two of each kind).
    """
    from sklearn.cluster import KMeans  # lazy: scikit-learn is heavy to import
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import adjusted_rand_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f = np.asarray(features, np.float64).reshape(len(features), -1)
    if not np.all(np.isfinite(f)):
        raise ValueError("features contains NaN or infinite values.")
    raw = np.asarray(is_poison)
    if raw.ndim != 1 or not np.isin(raw, (0, 1)).all():
        raise ValueError("is_poison must be a 1-D array of booleans (or 0/1), one per row of features.")
    b = raw.astype(bool)
    check_int("nb_dims", nb_dims, low=1)
    check_number("eps_multiplier", eps_multiplier, low=0, low_open=True, hint="Tran et al. remove 1.5 eps")
    check_seed("seed", seed, allow_none=False)
    if len(b) != len(f):
        raise ValueError(f"features has {len(f)} rows but is_poison has {len(b)}.")
    if b.sum() < 2 or (~b).sum() < 2:
        raise ValueError("latent_separability needs at least two poisoned and two clean images.")
    dims = max(1, min(int(nb_dims), f.shape[1], len(f) - 1))
    reduced = PCA(n_components=dims, random_state=seed).fit_transform(f)
    clusters = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(reduced)
    ari = float(adjusted_rand_score(b, clusters))
    scores = spectral_scores(f)
    nb_remove = int(round(float(eps_multiplier) * b.mean() * len(b)))
    removed = np.argsort(-scores)[:nb_remove]
    keep = np.ones(len(b), bool)
    keep[removed] = False
    ss_remaining = float(b[keep].sum() / b.sum())
    ss_auroc = float(roc_auc_score(b, scores))
    folds = StratifiedKFold(n_splits=int(min(5, b.sum(), (~b).sum())), shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    prob = cross_val_predict(probe, f, b, cv=folds, method="predict_proba")[:, 1]
    return LatentSeparability(ari=ari, ss_remaining=ss_remaining, ss_auroc=ss_auroc,
                              probe_auroc=float(roc_auc_score(b, prob)))
