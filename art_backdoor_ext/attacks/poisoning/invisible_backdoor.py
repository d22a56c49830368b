"""
Invisible (imperceptible) additive backdoor triggers as an ART black-box poisoning attack.

By default the invisible *static* trigger of Zhong et al., "Backdoor embedding in convolutional neural network models
via invisible perturbation" (CODASPY 2020, https://doi.org/10.1145/3374664.3375751): pixel ``(i, j)`` gets +3/255 iff
``i`` and ``j`` are both even. It is also pattern B of Xiang et al.'s RE paper (https://arxiv.org/abs/2010.07489),
whose patterns A-F are all available here (see :func:`~art_backdoor_ext.attacks.poisoning.perturbations.make_pattern`),
as is any user-given pattern array. Poisoned images are clipped to [0, 1] and kept on the 8-bit grid.
"""
from __future__ import annotations

import logging
from typing import Optional, Tuple, Union

import numpy as np

from art.attacks.attack import PoisoningAttackBlackBox

from art_backdoor_ext.attacks.poisoning.perturbations import (
    PatternTrigger,
    add_pattern,
    canonical_pattern_kind,
    make_pattern,
)
from art_backdoor_ext.layout import infer_layout
from art_backdoor_ext.utils import check_bool, check_int, check_seed, poison_labels

logger = logging.getLogger(__name__)


def image_shape_of(x: np.ndarray, channels_first: Optional[bool] = None) -> Tuple[int, ...]:
    """Shape of one image of ``x`` (a batch or one image, any layout)."""
    x = np.asarray(x)
    batched, _ = infer_layout(x, channels_first)
    return tuple(x.shape[1:] if batched else x.shape)


class PoisoningAttackInvisibleBackdoor(PoisoningAttackBlackBox):
    """
    Adds a fixed imperceptible pattern to the images and gives them the target label, like ART's
    ``PoisoningAttackBackdoor`` with an additive, clipped, 8-bit quantised trigger.

    :ivar pattern: The additive pattern (one image); built from the first images seen when only a kind was given
                   without ``image_shape``. Compare a defence's recovered pattern with it.
    """

    attack_params = PoisoningAttackBlackBox.attack_params + ["kind", "image_shape", "seed", "channels_first", "size"]
    _estimator_requirements: tuple = ()

    def __init__(self, pattern: Union[str, np.ndarray] = "static", image_shape: Optional[Tuple[int, ...]] = None,
                 seed: int = 0, channels_first: Optional[bool] = None, size: int = 3) -> None:
        """
        :param pattern: ``"static"`` (Zhong et al., = pattern B), any of the RE paper's patterns ``"A"``-``"F"`` /
                        ``"chessboard"``, ``"cross"``, ``"square"``, ``"random-pixels"``, ``"L"``, or a pattern array
                        (one image, any layout, signed values in [-1, 1]).
        :param image_shape: Shape of one image, to build a named pattern now; if None it is built from the first
                            images passed to :meth:`poison`.
        :param seed: Seed of the pattern's random location / channel / signs (patterns C-F).
        :param channels_first: Layout of the images; inferred when None.
        :param size: Size of the cross / square / L.
        """
        super().__init__()
        self.seed = seed
        self.channels_first = channels_first
        self.size = size
        self.image_shape = None if image_shape is None else tuple(int(s) for s in image_shape)
        self.pattern: Optional[np.ndarray] = None
        if isinstance(pattern, str):
            self.kind = pattern
        else:
            self.kind = "custom"
            self.pattern = np.array(pattern, dtype=np.float32, copy=True)
        self._check_params()
        if self.pattern is None and self.image_shape is not None:
            self.pattern = self._build(self.image_shape)

    def _build(self, image_shape: Tuple[int, ...]) -> np.ndarray:
        return make_pattern(self.kind, image_shape, seed=self.seed, channels_first=self.channels_first, size=self.size)

    def _check_params(self) -> None:
        if self.kind != "custom":
            self.kind = canonical_pattern_kind(self.kind)
        else:
            p = self.pattern
            if p.ndim not in (2, 3):
                raise ValueError(f"A pattern array must be one image (2 or 3 axes), got shape {p.shape}.")
            if not np.all(np.isfinite(p)) or np.abs(p).max(initial=0.0) > 1.0:
                raise ValueError("A pattern array must be finite with values in [-1, 1].")
        check_seed("seed", self.seed, allow_none=False)
        check_int("size", self.size, low=1, hint="pixels")
        if self.channels_first is not None:
            check_bool("channels_first", self.channels_first)

    def trigger(self, image_shape: Optional[Tuple[int, ...]] = None) -> PatternTrigger:
        """This attack's trigger as ART's perturbation ``f(x) -> x`` (with a ``.pattern`` attribute)."""
        if self.pattern is None:
            if image_shape is None:
                raise ValueError("The pattern is not built yet: pass image_shape or poison some images first.")
            self.pattern = self._build(tuple(image_shape))
        return PatternTrigger(self.pattern, kind=self.kind, channels_first=self.channels_first)

    def poison(self, x: np.ndarray, y: Optional[np.ndarray] = None, broadcast: bool = False,
               **kwargs) -> Tuple[np.ndarray, np.ndarray]:
        """
        Add the pattern to ``x`` (clipped, 8-bit) and return ``(x_poison, y_poison)``.

        :param x: Images, any layout; not modified.
        :param y: Target labels (one-hot or integer); with ``broadcast`` one label given for all images.
        :param broadcast: Broadcast a single target label ``y`` to every image.
        """
        x, y_attack = poison_labels(x, y, broadcast)
        if self.pattern is None:
            self.pattern = self._build(image_shape_of(x, self.channels_first))
            logger.info("Built the %s pattern for images of shape %s.", self.kind, self.pattern.shape)
        return add_pattern(x, self.pattern, channels_first=self.channels_first), y_attack
