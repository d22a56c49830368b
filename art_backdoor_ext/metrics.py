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


def _adapter(classifier):
    from art_backdoor_ext.estimators import get_adapter

    return get_adapter(classifier)


def accuracy(classifier, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Clean accuracy of an ART classifier on ``(x, y)`` (integer or one-hot labels)."""
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
        return json.loads(json.dumps(fields, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
