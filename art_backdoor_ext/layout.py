"""
Image layout: the one place that decides whether an image or a batch is channels-first or channels-last.

ART's convention is ``NCHW`` for PyTorch models and ``NHWC`` for Keras models; grayscale batches may also come as
``NHW``. Everything else in the package (triggers, defences, plotting, the harness) asks this module instead of
guessing on its own, so every part of the package reads an ambiguous shape the same way.

The one heuristic, used only when no explicit layout is given: a 3-axis image shape is channels-first when its first
axis has 1, 3 or 4 entries and its last axis does not.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np

__all__ = ["CHANNEL_SIZES", "ART_CHANNELS_FIRST", "framework_channels_first", "guess_channels_first", "infer_layout", "channel_axis", "image_dims", "to_nhwc",
           "to_display"]

CHANNEL_SIZES = (1, 3, 4)
"""Sizes a channel axis may have (grayscale, RGB, RGBA)."""


def guess_channels_first(image_shape) -> bool:
    """
    Whether one image of 3-axis ``image_shape`` (``CHW`` or ``HWC``) is channels-first, by the package's one
    heuristic: the first axis is a channel axis (1, 3 or 4) and the last is not.
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3:
        raise ValueError(f"guess_channels_first expects one image's shape with 3 axes, got {image_shape!r}.")
    return shape[0] in CHANNEL_SIZES and shape[-1] not in CHANNEL_SIZES


def infer_layout(x: np.ndarray, channels_first: Optional[bool] = None) -> Tuple[bool, Optional[int]]:
    """
    Work out the layout of an image or a batch of images.

    :param x: ``NCHW``, ``NHWC``, ``NHW`` (a batch), or one ``CHW``, ``HWC`` or ``HW`` image.
    :param channels_first: The layout when known (``None``: the heuristic of :func:`guess_channels_first`). For a
                           3-axis array an explicit layout means one image with a channel axis.
    :return: ``(batched, channel_axis)``; ``channel_axis`` is ``None`` for images without a channel axis.
    :raises ValueError: For arrays that are not images.
    """
    x = np.asarray(x)
    if x.ndim == 4:
        if channels_first is None:
            channels_first = guess_channels_first(x.shape[1:])
        return True, 1 if channels_first else 3
    if x.ndim == 3:
        if channels_first is not None:
            return False, 0 if channels_first else 2
        if x.shape[-1] in CHANNEL_SIZES:
            return False, 2  # one HWC image
        return True, None  # an NHW batch of grayscale images (a CHW image reads the same)
    if x.ndim == 2:
        return False, None
    raise ValueError(f"Expected an image or a batch of images (2 to 4 dimensions), got shape {x.shape}.")


def channel_axis(x: np.ndarray, channels_first: Optional[bool] = None) -> Optional[int]:
    """The channel axis of ``x`` (see :func:`infer_layout`), ``None`` when it has none."""
    return infer_layout(x, channels_first)[1]


def image_dims(image_shape, channels_first: Optional[bool] = None) -> Tuple[int, int, int, Optional[bool]]:
    """
    ``(height, width, channels, channels_first)`` of one image of ``image_shape`` (``(H, W)``, ``(C, H, W)`` or
    ``(H, W, C)``; a 4-axis batch shape is read as its images'). ``channels_first`` is ``None`` for ``(H, W)``.
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) == 2:
        (h, w), c, channels_first = shape, 1, None
    elif len(shape) == 3:
        if channels_first is None:
            channels_first = guess_channels_first(shape)
        c, h, w = shape if channels_first else (shape[2], shape[0], shape[1])
    else:
        raise ValueError(f"image_shape must be (H, W), (C, H, W) or (H, W, C), got {image_shape!r}.")
    if min(h, w, c) < 1:
        raise ValueError(f"image_shape must have positive sizes, got {image_shape!r}.")
    return h, w, c, channels_first


def to_nhwc(x: np.ndarray, channels_first: Optional[bool] = None) -> Tuple[np.ndarray, Callable[[np.ndarray],
                                                                                                np.ndarray]]:
    """
    A float32 ``NHWC`` copy of ``x`` and ``restore(y_nhwc)`` giving an array in the layout (and float dtype) of ``x``.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"Images must be numeric, got dtype {x.dtype}.")
    batched, axis = infer_layout(x, channels_first)
    out = np.array(x, dtype=np.float32, copy=True)
    if not batched:
        out = out[np.newaxis]
    first = axis == (1 if batched else 0)
    if axis is None:
        out = out[..., np.newaxis]
    elif first:
        out = np.moveaxis(out, 1, -1)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32

    def restore(y: np.ndarray) -> np.ndarray:
        if axis is None:
            y = y[..., 0]
        elif first:
            y = np.moveaxis(y, -1, 1)
        if not batched:
            y = y[0]
        return np.ascontiguousarray(y, dtype=dtype)

    return out, restore


def to_display(image: np.ndarray, channels_first: Optional[bool] = None) -> np.ndarray:
    """One image (``CHW``, ``HWC`` or ``HW``) as ``HW`` (one channel) or ``HWC`` for ``matplotlib``'s ``imshow``."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        if channels_first is None:
            channels_first = guess_channels_first(image.shape)
        if channels_first:
            image = np.moveaxis(image, 0, -1)
        if image.shape[-1] == 1:
            image = image[..., 0]
    return image


ART_CHANNELS_FIRST = {"pytorch": True, "keras": False}
"""ART's layout convention per framework: ``NCHW`` for PyTorch models, ``NHWC`` for Keras/TensorFlow models."""


def framework_channels_first(framework: str) -> bool:
    """Whether ART's convention puts channels first for ``framework`` (``"pytorch"`` or ``"keras"``)."""
    if framework not in ART_CHANNELS_FIRST:
        raise ValueError(f"framework must be one of {sorted(ART_CHANNELS_FIRST)}, got {framework!r}.")
    return ART_CHANNELS_FIRST[framework]
