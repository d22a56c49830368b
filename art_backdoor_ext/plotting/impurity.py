"""Cluster-impurity (CI) diagnostics: the impurity of every mixture component of every class."""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np


def plot_impurity(report: Dict[str, Any], threshold: Optional[float] = None, ax=None, title: Optional[str] = None,
                  true_target: Optional[int] = None):
    """
    Impurity of every Gaussian-mixture component, grouped by class (one marker per component, its size as the marker
    area), with the detection threshold as a horizontal line. Flagged components are drawn in red.

    :param report: The report of :meth:`ClusterImpurityDefence.detect_poison` (needs ``per_class``).
    :param threshold: Threshold line; defaults to the report's ``threshold``.
    :param ax: Matplotlib axes to draw into (a new figure when None).
    :param title: Figure title (default: layer, reduction and number of components).
    :param true_target: Optional true target class, marked on the x axis.
    :return: The matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    if not isinstance(report, dict) or "per_class" not in report:
        raise ValueError("report must be the dict returned by ClusterImpurityDefence.detect_poison().")
    per_class = {int(c): v for c, v in report["per_class"].items()}  # class keys may be strings (read from JSON)
    threshold = report.get("threshold", 0.5) if threshold is None else threshold
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(per_class) + 2), 3.4))
    else:
        fig = ax.figure
    classes = sorted(int(c) for c in per_class)
    all_sizes = [s for c in classes for s in per_class[c]["component_sizes"]] or [1]
    scale = 200.0 / max(all_sizes)
    for c in classes:
        pc = per_class[c]
        imp = np.asarray(pc["impurities"], float)
        sizes = np.asarray(pc["component_sizes"], float)
        if imp.size == 0:
            continue
        flagged = np.zeros(len(imp), bool)
        flagged[np.asarray(pc["flagged_components"], int)] = True
        offsets = np.linspace(-0.25, 0.25, len(imp)) if len(imp) > 1 else np.zeros(1)
        ax.scatter(c + offsets[~flagged], imp[~flagged], s=20 + sizes[~flagged] * scale, c="tab:blue", alpha=0.7,
                   edgecolors="k", linewidths=0.5)
        ax.scatter(c + offsets[flagged], imp[flagged], s=20 + sizes[flagged] * scale, c="tab:red", alpha=0.8,
                   edgecolors="k", linewidths=0.5)
    ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    labels = [f"{c}*" if true_target is not None and c == true_target else str(c) for c in classes]
    ax.set_xticks(classes)
    ax.set_xticklabels(labels)
    ax.set_xlabel("class (components; marker area = size)" + (" — * true target" if true_target is not None else ""))
    ax.set_ylabel("impurity  -log(unchanged)")
    top = max([threshold] + [v for c in classes for v in per_class[c]["impurities"]])
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]), top=1.15 * top + 0.05)
    if title is None:
        red = report.get("reduce")
        red = f"PCA-{report.get('nb_dims')}" if red == "pca" else "no reduction"
        title = f"Cluster impurity ({report.get('layer', '?')}, {red})"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig
