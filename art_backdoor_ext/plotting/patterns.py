"""Plots for the RE defence: recovered vs true backdoor pattern (paper Fig. 2) and the reciprocal statistics with
the fitted Gamma null (paper Fig. 15)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from art_backdoor_ext.plotting.common import to_display


def _show_pattern(ax, pattern: np.ndarray, title: str) -> None:
    img = to_display(pattern)
    if img.ndim == 3:
        img = img.mean(-1)
    lim = float(np.abs(img).max()) or 1.0
    im = ax.imshow(img, cmap="seismic", vmin=-lim, vmax=lim)
    ax.set_title(f"{title}\n$\\|v\\|_2$={np.linalg.norm(pattern):.3f}", fontsize=9)
    ax.axis("off")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def plot_pattern_comparison(recovered: np.ndarray, true: Optional[np.ndarray] = None, title: str = "recovered"):
    """
    The recovered pattern (e.g. ``report["pattern"]``) beside the true one, each on a symmetric colour scale.

    :param recovered: One image's additive pattern (``CHW``, ``HWC`` or ``HW``).
    :param true: The true pattern (e.g. the trigger's ``.pattern``), or ``None``.
    :return: matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if recovered is None:
        raise ValueError("No recovered pattern (nothing was detected?).")
    n = 1 if true is None else 2
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.2), squeeze=False)
    _show_pattern(axes[0, 0], np.asarray(recovered, np.float32), title)
    if true is not None:
        _show_pattern(axes[0, 1], np.asarray(true, np.float32), "true")
    fig.tight_layout()
    return fig


def plot_reciprocal_statistics(report: Dict[str, Any], target: Optional[int] = None, bins: int = 30):
    """
    Histogram of the reciprocal statistics r_st of a :class:`ReverseEngineeringDefence` report, with the Gamma null
    fitted on the pairs whose target is not ``target`` (default: the inferred target, else the class of smallest
    p-value) and the ``target`` column's statistics marked.

    :param report: The report of ``ReverseEngineeringDefence.detect_poison``.
    :return: matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from scipy import stats

    recip = np.asarray(report["reciprocal_statistics"], float)
    pvs = report["class_p_values"]
    if target is None:
        target = report.get("target_class")
        if target is None:
            target = min(pvs, key=pvs.get)
    mask = np.isfinite(recip)
    col = np.zeros_like(mask)
    col[:, target] = True
    null_vals, tgt_vals = recip[mask & ~col], recip[mask & col]
    shape, scale = report["null_params"][target]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    hi = float(np.nanmax(recip)) * 1.05
    ax.hist(null_vals, bins=bins, range=(0, hi), density=True, alpha=0.6, label=f"r_st, t != {target}")
    ax.hist(tgt_vals, bins=bins, range=(0, hi), density=True, alpha=0.6, color="C3", label=f"r_st, t = {target}")
    grid = np.linspace(1e-6, hi, 400)
    ax.plot(grid, stats.gamma.pdf(grid, shape, scale=scale), "k-", label=f"Gamma null (k={shape:.2g})")
    ax.set_xlabel("reciprocal statistic 1/||v_st||" + (" x median_t ||v_st|| (per source)"
                                                        if report.get("normalize_sources") else ""))
    ax.set_ylabel("density")
    ax.set_title(f"detected={report['detected']}, p={report['p_value']:.2g}, pv_{target}={pvs[target]:.2g}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
