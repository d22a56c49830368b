"""
Trigger functions with ART's perturbation signature ``f(x) -> x``.

They accept one image or a batch in any of the layouts ART uses (``NHWC``, ``NCHW``, ``NHW``, or a single ``HWC``,
``CHW``, ``HW`` image), never modify their input, keep values in [0, 1], and plug into
``art.attacks.poisoning.PoisoningAttackBackdoor``.

Visible triggers follow the AEGIS paper (https://arxiv.org/abs/2003.00865): a *localised* trigger is one square at the
bottom-right corner, a *distributed* trigger two smaller squares at the top-left and bottom-right corners.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)

Perturbation = Callable[[np.ndarray], np.ndarray]


def infer_layout(x: np.ndarray, channels_first: Optional[bool] = None) -> Tuple[bool, Optional[int]]:
    """
    Work out the layout of ``x``.

    :return: ``(batched, channel_axis)`` where ``channel_axis`` is ``None`` for images without a channel axis.
    :raises ValueError: For arrays that are not images.
    """
    if x.ndim == 4:
        if channels_first is None:
            channels_first = x.shape[1] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4)
        return True, 1 if channels_first else 3
    if x.ndim == 3:
        if channels_first is not None:  # an explicit layout means one image with a channel axis
            return False, 0 if channels_first else 2
        if x.shape[-1] in (1, 3, 4):
            return False, 2  # one HWC image
        return True, None  # NHW batch of grayscale images (a CHW image is read the same way)
    if x.ndim == 2:
        return False, None
    raise ValueError(f"Expected an image or a batch of images (2 to 4 dimensions), got shape {x.shape}.")


def to_nhwc(x: np.ndarray, channels_first: Optional[bool] = None):
    """
    View ``x`` as a float ``NHWC`` copy and return ``(x_nhwc, restore)`` where ``restore(y_nhwc)`` gives an array in
    the layout (and dtype) of ``x``.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"Images must be numeric, got dtype {x.dtype}.")
    batched, axis = infer_layout(x, channels_first)
    out = np.array(x, dtype=np.float32, copy=True)
    if not batched:
        out = out[np.newaxis]
    if axis is None:
        out = out[..., np.newaxis]
    elif axis == (1 if batched else 0):
        out = np.moveaxis(out, 1, -1)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32

    def restore(y: np.ndarray) -> np.ndarray:
        if axis is None:
            y = y[..., 0]
        elif axis == (1 if batched else 0):
            y = np.moveaxis(y, -1, 1)
        if not batched:
            y = y[0]
        return np.ascontiguousarray(y, dtype=dtype)

    return out, restore


def _check_square(size: int, value: float, name: str) -> None:
    if int(size) < 1:
        raise ValueError(f"{name}: size must be >= 1 pixel, got {size}.")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}: value must be in [0, 1], got {value}.")


def add_localised_trigger(x: np.ndarray, size: int = 3, value: float = 1.0, margin: int = 1,
                          channels_first: Optional[bool] = None) -> np.ndarray:
    """
    Visible localised trigger: one ``size`` x ``size`` square of ``value`` at the bottom-right corner, ``margin`` pixels
    from the border (a 3x3 square is ~1% of a 28x28 image).
    """
    _check_square(size, value, "add_localised_trigger")
    out, restore = to_nhwc(x, channels_first)
    h, w = out.shape[1:3]
    if size + margin > min(h, w):
        raise ValueError(f"A {size}px trigger with a {margin}px margin does not fit a {h}x{w} image.")
    out[:, h - margin - size:h - margin, w - margin - size:w - margin, :] = value
    return restore(out)


def add_distributed_trigger(x: np.ndarray, size: int = 2, value: float = 1.0, margin: int = 1,
                            channels_first: Optional[bool] = None) -> np.ndarray:
    """Visible distributed trigger: two ``size`` x ``size`` squares at the top-left and bottom-right corners."""
    _check_square(size, value, "add_distributed_trigger")
    out, restore = to_nhwc(x, channels_first)
    h, w = out.shape[1:3]
    if 2 * (size + margin) > min(h, w):
        raise ValueError(f"Two {size}px squares with a {margin}px margin do not fit a {h}x{w} image.")
    out[:, margin:margin + size, margin:margin + size, :] = value
    out[:, h - margin - size:h - margin, w - margin - size:w - margin, :] = value
    return restore(out)


def localised_trigger(size: int = 3, value: float = 1.0, margin: int = 1) -> Perturbation:
    """A configured :func:`add_localised_trigger` as ``f(x) -> x``."""
    _check_square(size, value, "localised_trigger")

    def perturbation(x: np.ndarray) -> np.ndarray:
        return add_localised_trigger(x, size=size, value=value, margin=margin)

    perturbation.__name__ = f"localised_trigger_{size}px"
    return perturbation


def distributed_trigger(size: int = 2, value: float = 1.0, margin: int = 1) -> Perturbation:
    """A configured :func:`add_distributed_trigger` as ``f(x) -> x``."""
    _check_square(size, value, "distributed_trigger")

    def perturbation(x: np.ndarray) -> np.ndarray:
        return add_distributed_trigger(x, size=size, value=value, margin=margin)

    perturbation.__name__ = f"distributed_trigger_{size}px"
    return perturbation
