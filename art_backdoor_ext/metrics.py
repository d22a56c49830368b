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

from art_backdoor_ext.utils import as_class_list, to_labels


def _predict_labels(classifier, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    from art_backdoor_ext.estimators import get_adapter

    return get_adapter(classifier).predict_labels(x, batch_size=batch_size)


def accuracy(classifier, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Clean accuracy of an ART classifier on ``(x, y)`` (integer or one-hot labels)."""
    labels = to_labels(y)
    if len(x) != len(labels):
        raise ValueError(f"x has {len(x)} images but y has {len(labels)} labels.")
    if len(labels) == 0:
        raise ValueError("Cannot compute accuracy on an empty set.")
    return float(np.mean(_predict_labels(classifier, x, batch_size) == labels))


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
    labels = to_labels(y)
    if len(x) != len(labels):
        raise ValueError(f"x has {len(x)} images but y has {len(labels)} labels.")
    nb_classes = int(max(labels.max() + 1, target + 1)) if len(labels) else target + 1
    sources = as_class_list(sources, nb_classes, exclude=target)
    mask = np.isin(labels, sources) & (labels != target)
    if not mask.any():
        raise ValueError(f"No test images of the source classes {sources}.")
    x_triggered = trigger(np.array(x[mask], copy=True))
    return float(np.mean(_predict_labels(classifier, x_triggered, batch_size) == target))


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
    is_clean = np.asarray(is_clean).astype(int)
    is_poison = np.asarray(is_poison).astype(bool)
    labels = to_labels(y)
    if not (len(is_clean) == len(is_poison) == len(labels)):
        raise ValueError(f"is_clean ({len(is_clean)}), is_poison ({len(is_poison)}) and y ({len(labels)}) "
                         "must have the same length.")
    if not np.isin(is_clean, (0, 1)).all():
        raise ValueError("is_clean must contain only 0 (flagged) and 1 (clean).")
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
        return json.loads(json.dumps(fields, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
