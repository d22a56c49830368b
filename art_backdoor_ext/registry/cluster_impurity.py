"""
Harness registrations for the cluster-impurity defence (issue 5):

* defences ``"ci"`` (this package's default: PCA to 10 dimensions before the mixture fit) and ``"ci-raw"`` (the paper:
  mixtures on the raw features);
* attack ``"isolated-pixels"``: pattern E of the RE paper with every pixel *brightening* (+0.35 added to four isolated
  pixels at seeded positions). On MNIST's black background pattern E's darkening pixels are clipped away, so this is
  the variant of E that a 2x2 blur is meant to destroy.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from art_backdoor_ext.evaluation import AttackContext, ScenarioContext, register_attack, register_defence


def isolated_pixels_pattern(image_shape, nb_pixels: int = 4, value: float = 0.35, seed: int = 0,
                            channels_first: Optional[bool] = None, border_band: bool = False) -> np.ndarray:
    """
    An additive pattern of ``nb_pixels`` pixels of ``+value`` (every channel; 0.35 ~ pattern E's 80-96/255) for one
    image of ``image_shape``, at seeded positions at least one pixel from the border and three pixels from one another
    (no two share a 2x2 blur window); with ``border_band`` only in the outer band of the image (within
    ``max(3, min(H, W) // 5)`` pixels of the border, the background of centred digits).
    """
    shape = tuple(int(s) for s in image_shape)
    if not 0 < float(value) <= 1:
        raise ValueError(f"value must be in (0, 1], got {value!r}.")
    if len(shape) == 2:
        h, w, axis = shape[0], shape[1], None
    elif len(shape) == 3:
        if channels_first is None:
            channels_first = shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4)
        axis = 0 if channels_first else 2
        h, w = [s for a, s in enumerate(shape) if a != axis]
    else:
        raise ValueError(f"image_shape must be (H, W), (C, H, W) or (H, W, C), got {image_shape!r}.")
    rng = np.random.default_rng(seed)
    band = max(3, min(h, w) // 5)  # the outer band, where MNIST-like digits never reach
    cells = [(r, c) for r in range(1, h - 1) for c in range(1, w - 1)
             if min(r, c, h - 1 - r, w - 1 - c) < band or not border_band]
    chosen = []
    for i in rng.permutation(len(cells)):
        r, c = cells[i]
        if all(max(abs(r - r2), abs(c - c2)) >= 3 for r2, c2 in chosen):
            chosen.append((r, c))
        if len(chosen) == nb_pixels:
            break
    if len(chosen) < nb_pixels:
        raise ValueError(f"Cannot place {nb_pixels} isolated pixels in a {h}x{w} image.")
    pattern = np.zeros((h, w), np.float32)
    rows, cols = np.array(chosen).T
    pattern[rows, cols] = float(value)
    if axis is None:
        return pattern
    return np.repeat(np.expand_dims(pattern, axis), shape[axis], axis=axis)


@register_attack("isolated-pixels")
def _isolated_pixels(ctx: AttackContext, nb_pixels: int = 4, value: float = 0.35, seed: Optional[int] = None,
                     border_band: bool = False):
    """Pattern E with brightening pixels only (see the module docstring); clipped to [0, 1]."""
    pattern = isolated_pixels_pattern(ctx.x_train.shape[1:], nb_pixels, value, ctx.seed if seed is None else seed,
                                      channels_first=ctx.framework == "pytorch", border_band=border_band)

    def trigger(x: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(x, np.float32) + pattern, 0.0, 1.0)

    trigger.pattern = pattern
    trigger.__name__ = "isolated_pixels_trigger"
    return trigger


def _run(ctx: ScenarioContext, **kwargs: Any):
    from art_backdoor_ext.defences.detector.poison.cluster_impurity import ClusterImpurityDefence

    defence = ClusterImpurityDefence(ctx.classifier, ctx.x_train, ctx.y_train, verbose=ctx.verbose, **kwargs)
    report, is_clean = defence.detect_poison()
    comps = report["nb_components"]
    report = dict(report)
    report["notes"] = "components/class " + ",".join(str(comps[c]) for c in sorted(comps))
    return report, is_clean


@register_defence("ci")
def _cluster_impurity(ctx: ScenarioContext, layer: Optional[str] = None, reduce: Optional[str] = "pca",
                      nb_dims: int = 10, **kwargs: Any):
    """
    Cluster impurity with this package's default PCA reduction (``reduce="pca"``, ``nb_dims=10``); other
    :class:`ClusterImpurityDefence` parameters pass through.
    """
    return _run(ctx, layer=layer, reduce=reduce, nb_dims=nb_dims, **kwargs)


@register_defence("ci-raw")
def _cluster_impurity_raw(ctx: ScenarioContext, layer: Optional[str] = None, **kwargs: Dict[str, Any]):
    """Cluster impurity as in the paper: mixtures on the raw (unreduced) features."""
    return _run(ctx, layer=layer, reduce=None, **kwargs)
