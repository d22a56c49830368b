"""
Poisoned training sets with ground truth, for every attack setting of the papers.

* RE paper (https://arxiv.org/abs/2010.07489) 1SC / 3SC / 9SC: ``sources`` = one, three or all-but-target classes,
  ``n_per_source`` images from each source class get the trigger and the target label; their clean originals are
  removed (``remove_originals=True``).
* AEGIS (https://arxiv.org/abs/2003.00865): ``fraction`` of the whole training set (1% visible, 30% invisible),
  drawn from the source classes.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterable, List, Optional, Union

import numpy as np

from art_backdoor_ext.utils import as_class_list, check_bool, check_int, check_number, check_range, check_seed, check_xy

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PoisonedDataset:
    """A poisoned training set and its ground truth."""

    x: np.ndarray
    """Training images, poisoned ones included."""
    y: np.ndarray
    """Integer labels (poisoned images carry the target label)."""
    is_poison: np.ndarray
    """Boolean mask: True for poisoned images."""
    target: int
    sources: List[int]
    source_indices: np.ndarray
    """Indices into the *original* arrays of the images that were poisoned."""

    @property
    def nb_poison(self) -> int:
        return int(self.is_poison.sum())

    @property
    def poison_fraction(self) -> float:
        return float(self.is_poison.mean()) if len(self.is_poison) else 0.0

    def __iter__(self):  # allows ``x, y, is_poison = poison_dataset(...)``
        return iter((self.x, self.y, self.is_poison))


def _apply(perturbation_or_attack, x: np.ndarray, target: int, nb_classes: int) -> np.ndarray:
    """Run a perturbation function or an ART poisoning attack on a copy of ``x``."""
    x = np.array(x, copy=True)
    if hasattr(perturbation_or_attack, "poison"):
        y_target = np.zeros((len(x), nb_classes), dtype=np.float32)
        y_target[:, target] = 1.0
        x_poison, _ = perturbation_or_attack.poison(x, y=y_target)
        return np.asarray(x_poison, dtype=np.float32)
    if callable(perturbation_or_attack):
        return np.asarray(perturbation_or_attack(x), dtype=np.float32)
    raise ValueError("perturbation_or_attack must be a callable f(x) -> x or an ART poisoning attack with poison().")


def poison_dataset(
    x: np.ndarray,
    y: np.ndarray,
    perturbation_or_attack: Union[Callable[[np.ndarray], np.ndarray], object],
    target: int,
    sources: Union[None, int, str, Iterable[int]] = None,
    n_per_source: Optional[int] = None,
    fraction: Optional[float] = None,
    remove_originals: bool = True,
    nb_classes: Optional[int] = None,
    seed: int = 0,
) -> PoisonedDataset:
    """
    Poison a training set: images of the source classes get the trigger and the target label.

    Exactly one of ``n_per_source`` (images per source class: the RE paper's setting) and ``fraction`` (fraction of the
    whole returned training set: the AEGIS setting; spread evenly over the source classes) must be given.

    :param x: Clean training images (not modified).
    :param y: Integer or one-hot labels.
    :param perturbation_or_attack: A trigger ``f(x) -> x`` or an ART poisoning attack (``poison(x, y)`` is called with
                                   one-hot target labels).
    :param target: Target class.
    :param sources: Source classes: an int (1SC), a list (3SC), or ``None``/``"all"`` for every class but the target.
    :param n_per_source: Poisoned images taken from each source class.
    :param fraction: Fraction of the returned training set that is poisoned, in (0, 1).
    :param remove_originals: Drop the clean originals of the poisoned images (RE paper) instead of keeping both.
    :param nb_classes: Number of classes (default: inferred from the labels).
    :param seed: Seed of the choice of images.
    :return: :class:`PoisonedDataset` (also unpacks as ``x, y, is_poison``).
    """
    x, labels = check_xy(x, y)
    check_bool("remove_originals", remove_originals)
    check_range(x, 0.0, 1.0, name="x", bound="ART's image range, which the triggers keep")
    if len(labels) == 0:
        raise ValueError("x is empty: poison_dataset needs training images.")
    if nb_classes is None:
        nb_classes = int(labels.max() + 1)
    else:
        nb_classes = check_int("nb_classes", nb_classes, low=2)
        if labels.max() >= nb_classes:
            raise ValueError(f"y holds label {int(labels.max())} but nb_classes is {nb_classes}; labels must lie in "
                             f"[0, nb_classes).")
    check_seed("seed", seed, allow_none=False)
    if isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer)) \
            or not 0 <= target < nb_classes:
        raise ValueError(f"target must be a class index in [0, {nb_classes}), got {target!r}.")
    target = int(target)
    sources = as_class_list(sources, nb_classes, exclude=target)
    if (n_per_source is None) == (fraction is None):
        raise ValueError("Give exactly one of n_per_source (RE paper's 1SC/3SC/9SC) and fraction (AEGIS).")
    rng = np.random.default_rng(seed)
    pools = [np.flatnonzero(labels == s) for s in sources]
    if fraction is not None:
        check_number("fraction", fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        # Solve for the number of poisoned images so that they are `fraction` of the returned set.
        total = len(x) / (1.0 - fraction) * fraction if not remove_originals else len(x) * fraction
        counts = np.full(len(sources), int(round(total)) // len(sources))
        counts[: int(round(total)) - counts.sum()] += 1
    else:
        check_int("n_per_source", n_per_source, low=1)
        counts = np.full(len(sources), int(n_per_source))
    for s, pool, n in zip(sources, pools, counts):
        if n > len(pool):
            raise ValueError(f"Source class {s} has only {len(pool)} images; cannot poison {n} of them.")
    chosen = np.concatenate([rng.choice(pool, size=n, replace=False) for pool, n in zip(pools, counts)]).astype(int)
    chosen.sort()
    if len(chosen) == 0:
        raise ValueError("No image would be poisoned; raise n_per_source or fraction.")

    x_poison = _apply(perturbation_or_attack, x[chosen], target, nb_classes)
    if x_poison.shape != x[chosen].shape:
        raise ValueError(f"The trigger changed the image shape from {x[chosen].shape[1:]} to {x_poison.shape[1:]}.")
    if not np.all(np.isfinite(x_poison)):
        raise ValueError("The trigger returned NaN or infinite values; check perturbation_or_attack.")
    check_range(x_poison, 0.0, 1.0, name="the triggered images", bound="ART's image range")
    keep = np.ones(len(x), dtype=bool)
    if remove_originals:
        keep[chosen] = False
    x_out = np.concatenate([x[keep], x_poison]).astype(np.float32)
    y_out = np.concatenate([labels[keep], np.full(len(chosen), target, dtype=np.int64)])
    is_poison = np.concatenate([np.zeros(int(keep.sum()), bool), np.ones(len(chosen), bool)])
    order = np.random.default_rng(seed + 1).permutation(len(x_out))
    logger.info("Poisoned %d images (%d source classes -> %d); %.1f%% of %d.", len(chosen), len(sources), target,
                100.0 * len(chosen) / len(x_out), len(x_out))
    return PoisonedDataset(x=x_out[order], y=y_out[order], is_poison=is_poison[order], target=target,
                           sources=sources, source_indices=chosen)
