"""
Trigger functions with ART's perturbation signature ``f(x) -> x``.

They accept one image or a batch in any of the layouts ART uses (``NHWC``, ``NCHW``, ``NHW``, or a single ``HWC``,
``CHW``, ``HW`` image), never modify their input, keep values in [0, 1], and plug into
``art.attacks.poisoning.PoisoningAttackBackdoor``.

Visible triggers follow the AEGIS paper (https://arxiv.org/abs/2003.00865): a *localised* trigger is one square at the
bottom-right corner, a *distributed* trigger two smaller squares at the top-left and bottom-right corners.

Imperceptible additive patterns A-F follow the RE paper (https://arxiv.org/abs/2010.07489, supplementary section 8):
images stay on the 8-bit grid ``{0, 1/255, ..., 1}`` after the pattern is added and clipped.

* A ``"chessboard"``: every other pixel (``(i + j)`` even) +2/255, all channels;
* B ``"static"``: pixel ``(i, j)`` +3/255 iff ``i`` and ``j`` are both even (Zhong et al.'s invisible static trigger,
  https://doi.org/10.1145/3374664.3375751), all channels;
* C ``"cross"``: a plus sign (``size`` x ``size`` bounding box, default 3: five pixels) +70/255, all channels;
* D ``"square"``: a ``size`` x ``size`` square (default 3) +80/255 in the first channel only;
* E ``"random-pixels"``: four random pixels of one random channel, each with a random sign and a magnitude drawn from
  ``{80, ..., 96}/255``;
* F ``"L"``: an L (a vertical bar of ``size`` pixels and a foot of ``size - 1`` pixels to its right; five pixels by
  default) +70/255, all channels.

The paper gives neither the sizes of C, D, F (taken here as 3-pixel shapes, which suits 28x28 MNIST as the paper's
shapes suit 32x32 CIFAR-10) nor how locations are drawn (here uniformly where the shape fits). Random choices are drawn
once from ``seed`` and are then fixed.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np

from art_backdoor_ext.layout import image_dims, infer_layout, to_nhwc  # noqa: F401  (re-exported)
from art_backdoor_ext.utils import check_bool, check_int, check_number, check_range, check_seed

logger = logging.getLogger(__name__)

Perturbation = Callable[[np.ndarray], np.ndarray]


def _check_square(size: int, value: float, name: str, margin: int = 0) -> None:
    check_int(f"{name}: size", size, low=1, hint="pixels")
    check_number(f"{name}: value", value, low=0, high=1)
    check_int(f"{name}: margin", margin, low=0, hint="pixels")


def _check_x(x: np.ndarray, name: str = "x") -> None:
    """Images a trigger is added to: numeric, finite and in [0, 1] (a ``ValueError`` naming ``name`` and the fix)."""
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers (images in [0, 1]), got dtype {arr.dtype}.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: give at least one image.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    check_range(arr, 0.0, 1.0, name=name, bound="ART's image range, which triggers keep")


def add_localised_trigger(x: np.ndarray, size: int = 3, value: float = 1.0, margin: int = 1,
                          channels_first: Optional[bool] = None) -> np.ndarray:
    """
    Visible localised trigger: one ``size`` x ``size`` square of ``value`` at the bottom-right corner, ``margin`` pixels
    from the border (a 3x3 square is ~1% of a 28x28 image).
    """
    _check_square(size, value, "add_localised_trigger", margin)
    _check_x(x)
    out, restore = to_nhwc(x, channels_first)
    h, w = out.shape[1:3]
    if size + margin > min(h, w):
        raise ValueError(f"A {size}px trigger with a {margin}px margin does not fit a {h}x{w} image.")
    out[:, h - margin - size:h - margin, w - margin - size:w - margin, :] = value
    return restore(out)


def add_distributed_trigger(x: np.ndarray, size: int = 2, value: float = 1.0, margin: int = 1,
                            channels_first: Optional[bool] = None) -> np.ndarray:
    """Visible distributed trigger: two ``size`` x ``size`` squares at the top-left and bottom-right corners."""
    _check_square(size, value, "add_distributed_trigger", margin)
    _check_x(x)
    out, restore = to_nhwc(x, channels_first)
    h, w = out.shape[1:3]
    if 2 * (size + margin) > min(h, w):
        raise ValueError(f"Two {size}px squares with a {margin}px margin do not fit a {h}x{w} image.")
    out[:, margin:margin + size, margin:margin + size, :] = value
    out[:, h - margin - size:h - margin, w - margin - size:w - margin, :] = value
    return restore(out)


def localised_trigger(size: int = 3, value: float = 1.0, margin: int = 1) -> Perturbation:
    """A configured :func:`add_localised_trigger` as ``f(x) -> x``."""
    _check_square(size, value, "localised_trigger", margin)

    def perturbation(x: np.ndarray) -> np.ndarray:
        return add_localised_trigger(x, size=size, value=value, margin=margin)

    perturbation.__name__ = f"localised_trigger_{size}px"
    return perturbation


def distributed_trigger(size: int = 2, value: float = 1.0, margin: int = 1) -> Perturbation:
    """A configured :func:`add_distributed_trigger` as ``f(x) -> x``."""
    _check_square(size, value, "distributed_trigger", margin)

    def perturbation(x: np.ndarray) -> np.ndarray:
        return add_distributed_trigger(x, size=size, value=value, margin=margin)

    perturbation.__name__ = f"distributed_trigger_{size}px"
    return perturbation


# ------------------------------------------------------------------------------------------------------ patterns A-F
PATTERN_KINDS = ("chessboard", "static", "cross", "square", "random-pixels", "L")
"""Canonical names of the RE paper's patterns A-F, in order."""

PATTERN_ALIASES = {
    "a": "chessboard", "chessboard": "chessboard",
    "b": "static", "static": "static", "static-grid": "static", "grid": "static",
    "c": "cross", "cross": "cross",
    "d": "square", "square": "square",
    "e": "random-pixels", "random-pixels": "random-pixels", "random_pixels": "random-pixels", "pixels": "random-pixels",
    "f": "L", "l": "L", "l-shape": "L",
}


def canonical_pattern_kind(kind: str) -> str:
    """Canonical pattern name for ``kind`` (``"A"``-``"F"`` or a name, case-insensitive); ValueError when unknown."""
    if not isinstance(kind, str) or kind.strip().lower() not in PATTERN_ALIASES:
        raise ValueError(f"Unknown pattern kind {kind!r}; use one of A-F or {', '.join(PATTERN_KINDS)}.")
    return PATTERN_ALIASES[kind.strip().lower()]


def _shape_mask(kind: str, size: int) -> np.ndarray:
    """Boolean ``size`` x ``size`` mask of the cross / square / L."""
    m = np.zeros((size, size), bool)
    if kind == "square":
        m[:] = True
    elif kind == "cross":
        m[size // 2, :] = True
        m[:, size // 2] = True
    else:  # "L"
        m[:, 0] = True
        m[-1, :] = True
    return m


def make_pattern(kind: str, image_shape, seed: int = 0, channels_first: Optional[bool] = None, *,
                 size: int = 3, magnitude: Optional[float] = None, patch: Optional[int] = None) -> np.ndarray:
    """
    The additive pattern of the RE paper's pattern ``kind`` (A-F) for images of ``image_shape``.

    :param kind: ``"chessboard"`` (A), ``"static"`` (B), ``"cross"`` (C), ``"square"`` (D), ``"random-pixels"`` (E),
                 ``"L"`` (F), or the letter.
    :param image_shape: Shape of one image: ``(C, H, W)``, ``(H, W, C)`` or ``(H, W)`` (a leading batch axis is ignored).
    :param seed: Seed of the random location (C, D, E, F), channel, signs and magnitudes (E).
    :param channels_first: Layout of ``image_shape`` when it has three axes; inferred when None.
    :param size: Bounding-box size of the cross, square and L (ignored by A, B, E).
    :param magnitude: Perturbation of every perturbed pixel, in [0, 1] (rounded to the 8-bit grid); ``None`` = the
                      paper's (A 2/255, B 3/255, C and F 70/255, D 80/255). Ignored by E (random magnitudes).
    :param patch: A and B only: confine the pattern to a ``patch`` x ``patch`` square at the bottom-right corner
                  (``None`` = the whole image). The RE paper's MNIST attack (supplementary Section 19, Fig. 14) is a
                  6 x 6 chessboard patch of 25/255 there: ``make_pattern("A", shape, magnitude=25/255, patch=6)``.
    :return: float32 array of ``image_shape`` (one image) with the signed perturbation; on the 8-bit grid.
    """
    kind = canonical_pattern_kind(kind)
    h, w, c, cf = image_dims(image_shape, channels_first)
    check_seed("seed", seed, allow_none=False)
    check_int("size", size, low=1, hint="pixels")
    if patch is not None:
        check_int("patch", patch, low=1, hint="pixels")
    if magnitude is not None:
        check_number("magnitude", magnitude, low=0, high=1, low_open=True, hint="e.g. 2/255 for pattern A")
    if int(size) < 2 and kind in ("cross", "L"):
        raise ValueError(f"A {kind} needs size >= 2, got {size}.")
    if int(size) < 1 or int(size) > min(h, w):
        raise ValueError(f"size must be in [1, {min(h, w)}] for {h}x{w} images, got {size}.")
    if magnitude is not None and not 0.0 < float(magnitude) <= 1.0:
        raise ValueError(f"magnitude must be in (0, 1] (e.g. 2/255 for pattern A), got {magnitude!r}.")
    if magnitude is not None and np.round(float(magnitude) * 255.0) < 1:
        raise ValueError(f"magnitude {magnitude!r} is below half a grey level (1/255 = {1 / 255:.4f}): on the 8-bit "
                         "grid of the RE paper the pattern would vanish; use at least 1/255.")
    if patch is not None:
        if kind not in ("chessboard", "static"):
            raise ValueError(f"patch applies to the chessboard (A) and static (B) patterns only, not {kind!r}.")
        if not 1 <= int(patch) <= min(h, w):
            raise ValueError(f"patch must be in [1, {min(h, w)}] for {h}x{w} images, got {patch!r}.")
    default = {"chessboard": 2, "static": 3, "cross": 70, "square": 80, "L": 70}.get(kind, 0) / 255.0
    value = default if magnitude is None else float(np.round(float(magnitude) * 255.0) / 255.0)
    rng = np.random.default_rng([int(seed), PATTERN_KINDS.index(kind)])  # each kind its own draw for one seed
    pat = np.zeros((h, w, c), np.float32)
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    if kind in ("chessboard", "static"):
        mask = (ii + jj) % 2 == 0 if kind == "chessboard" else (ii % 2 == 0) & (jj % 2 == 0)
        if patch is not None:
            mask &= (ii >= h - int(patch)) & (jj >= w - int(patch))
        pat[mask] = value
    elif kind in ("cross", "square", "L"):
        size = int(size)
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        mask = np.zeros((h, w), bool)
        mask[top:top + size, left:left + size] = _shape_mask(kind, size)
        if kind == "square":
            pat[mask, 0] = value
        else:
            pat[mask] = value
    else:  # random-pixels
        flat = rng.choice(h * w, size=min(4, h * w), replace=False)
        channel = int(rng.integers(0, c))
        signs = rng.choice(np.array([-1.0, 1.0]), size=len(flat))
        magnitudes = rng.integers(80, 97, size=len(flat)) / 255.0
        pat[flat // w, flat % w, channel] = (signs * magnitudes).astype(np.float32)
    if cf is None:
        pat = pat[..., 0]
    elif cf:
        pat = np.moveaxis(pat, -1, 0)
    return np.ascontiguousarray(pat, dtype=np.float32)


def _pattern_as_hwc(pattern: np.ndarray, h: int, w: int, c: int, x_channel_first: Optional[bool]) -> np.ndarray:
    """Bring one image's pattern to ``(h, w, c or 1)`` to match images of ``h`` x ``w`` with ``c`` channels."""
    p = np.asarray(pattern, dtype=np.float32)
    if p.ndim == 4 and p.shape[0] == 1:
        p = p[0]
    if p.ndim == 2 and p.shape == (h, w):
        return p[..., np.newaxis]
    if p.ndim == 3:
        hwc_ok = p.shape[:2] == (h, w) and p.shape[2] in (1, c)
        chw_ok = p.shape[1:] == (h, w) and p.shape[0] in (1, c)
        if hwc_ok and chw_ok:  # ambiguous (h == w == c): follow the images' layout
            return np.moveaxis(p, 0, -1) if x_channel_first else p
        if hwc_ok:
            return p
        if chw_ok:
            return np.moveaxis(p, 0, -1)
    raise ValueError(f"A pattern of shape {p.shape} does not fit {h}x{w} images with {c} channel(s); give one image's "
                     f"shape, e.g. ({c}, {h}, {w}), ({h}, {w}, {c}) or ({h}, {w}).")


def add_pattern(x: np.ndarray, pattern: np.ndarray, channels_first: Optional[bool] = None,
                quantise: bool = True) -> np.ndarray:
    """
    Add ``pattern`` to ``x``, clip to [0, 1] and round to the 8-bit grid (``round(x * 255) / 255``).

    :param x: One image or a batch (``NHWC``, ``NCHW``, ``NHW``, ``HWC``, ``CHW``, ``HW``); never modified.
    :param pattern: One image's additive pattern in either layout (or ``(H, W)``, applied to every channel).
    :param channels_first: Layout of ``x``; inferred when None.
    :param quantise: Round to the 8-bit grid (the RE paper's setting); False keeps continuous values.
    :return: The poisoned images, in the layout and float dtype of ``x``.
    """
    _check_x(x)
    check_bool("quantise", quantise)
    out, restore = to_nhwc(x, channels_first)
    batched, axis = infer_layout(np.asarray(x), channels_first)
    x_cf = None if axis is None else axis == (1 if batched else 0)
    p = _pattern_as_hwc(pattern, out.shape[1], out.shape[2], out.shape[3], x_cf)
    if not np.all(np.isfinite(p)):
        raise ValueError("The pattern contains NaN or infinite values.")
    out += p[np.newaxis]
    np.clip(out, 0.0, 1.0, out=out)
    if quantise:
        out = np.round(out * 255.0) / 255.0
    return restore(out.astype(np.float32))


class PatternTrigger:
    """
    An additive pattern as ART's perturbation ``f(x) -> x`` (see :func:`add_pattern`); picklable.

    :ivar pattern: The additive pattern (one image, the layout it was built for).
    :ivar kind: The pattern's name (``"custom"`` for a user array).
    """

    def __init__(self, pattern: np.ndarray, kind: str = "custom", channels_first: Optional[bool] = None,
                 quantise: bool = True):
        pattern = np.array(pattern, dtype=np.float32, copy=True)
        if pattern.ndim not in (2, 3) or not np.all(np.isfinite(pattern)):
            raise ValueError(f"pattern must be one finite image (2 or 3 axes), got shape {pattern.shape}.")
        if np.abs(pattern).max(initial=0.0) > 1.0:
            raise ValueError(f"pattern must be an additive pattern for images in [0, 1], with values in [-1, 1]; got "
                             f"values up to {np.abs(pattern).max():.4g} (a 0-255 pattern? divide it by 255).")
        check_bool("quantise", quantise)
        pattern.setflags(write=False)
        self.pattern = pattern
        self.kind = kind
        self.channels_first = channels_first
        self.quantise = quantise
        self.__name__ = f"pattern_trigger_{kind}"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return add_pattern(x, self.pattern, channels_first=self.channels_first, quantise=self.quantise)

    def __repr__(self) -> str:
        return f"PatternTrigger(kind={self.kind!r}, shape={self.pattern.shape}, l2={np.linalg.norm(self.pattern):.4f})"


def pattern_trigger(kind_or_array, image_shape=None, seed: int = 0, channels_first: Optional[bool] = None,
                    **kwargs) -> PatternTrigger:
    """
    An additive-pattern trigger ``f(x) -> x`` with a ``.pattern`` attribute.

    :param kind_or_array: A pattern kind (A-F, see :func:`make_pattern`) or a user pattern array (one image).
    :param image_shape: Shape of one image (needed for a kind).
    :param seed: Seed of the pattern's random choices.
    :param channels_first: Layout of ``image_shape`` / of the images the trigger is applied to; inferred when None.
    :param kwargs: Passed to :func:`make_pattern` (e.g. ``size``).
    """
    if isinstance(kind_or_array, str):
        if image_shape is None:
            raise ValueError("pattern_trigger needs image_shape to build a pattern by name.")
        kind = canonical_pattern_kind(kind_or_array)
        return PatternTrigger(make_pattern(kind, image_shape, seed=seed, channels_first=channels_first, **kwargs),
                              kind=kind)
    return PatternTrigger(np.asarray(kind_or_array), kind="custom")


def isolated_pixels_pattern(image_shape, nb_pixels: int = 4, value: float = 0.35, seed: int = 0,
                            channels_first: Optional[bool] = None, border_band: bool = False) -> np.ndarray:
    """
    An additive pattern of ``nb_pixels`` pixels of ``+value`` (every channel; 0.35 ~ pattern E's 80-96/255) for one
    image of ``image_shape``, at seeded positions at least one pixel from the border and three pixels from one another
    (no two share a 2x2 blur window); with ``border_band`` only in the outer band of the image (within
    ``max(3, min(H, W) // 5)`` pixels of the border, the background of centred digits).

    This is pattern E of the RE paper with every pixel *brightening*: on MNIST's black background pattern E's
    darkening pixels are clipped away, so this is the variant of E that a 2x2 blur (cluster impurity) is meant to
    destroy.
    """
    check_number("value", value, low=0, high=1, low_open=True)
    check_int("nb_pixels", nb_pixels, low=1)
    check_seed("seed", seed, allow_none=False)
    check_bool("border_band", border_band)
    if len(tuple(image_shape)) not in (2, 3):
        raise ValueError(f"image_shape must be (H, W), (C, H, W) or (H, W, C), got {image_shape!r}.")
    h, w, c, cf = image_dims(image_shape, channels_first)
    rng = np.random.default_rng(seed)
    band = max(3, min(h, w) // 5)  # the outer band, where MNIST-like digits never reach
    cells = [(r, col) for r in range(1, h - 1) for col in range(1, w - 1)
             if min(r, col, h - 1 - r, w - 1 - col) < band or not border_band]
    chosen = []
    for i in rng.permutation(len(cells)):
        r, col = cells[i]
        if all(max(abs(r - r2), abs(col - c2)) >= 3 for r2, c2 in chosen):
            chosen.append((r, col))
        if len(chosen) == nb_pixels:
            break
    if len(chosen) < nb_pixels:
        raise ValueError(f"Cannot place {nb_pixels} isolated pixels in a {h}x{w} image.")
    pattern = np.zeros((h, w), np.float32)
    rows, cols = np.array(chosen).T
    pattern[rows, cols] = float(value)
    if cf is None:
        return pattern
    axis = 0 if cf else 2
    return np.repeat(np.expand_dims(pattern, axis), c, axis=axis)
