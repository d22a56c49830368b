"""Pruning curves for fine-pruning: clean accuracy and attack success rate against the fraction of channels pruned."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

Curve = Mapping[str, Any]


def _as_curve(obj: Any) -> Dict[str, Any]:
    """A pruning curve from a FinePruning report, its ``pruning_curve`` dict, or a FinePruning instance."""
    if hasattr(obj, "report_"):
        obj = obj.report_
    if "pruning_curve" in obj:
        curve = dict(obj["pruning_curve"])
        curve.setdefault("chosen", obj.get("fraction_pruned"))
        curve.setdefault("max_acc_drop", obj.get("max_acc_drop"))
        return curve
    if "fraction" not in obj or "accuracy" not in obj:
        raise ValueError("A pruning curve needs 'fraction' and 'accuracy' (pass FinePruning.report_ or its "
                         "'pruning_curve').")
    return dict(obj)


def plot_pruning_curve(curves: Union[Curve, Sequence[Curve], Mapping[str, Curve]], ax=None,
                       title: Optional[str] = "Fine-pruning", show_threshold: bool = True):
    """
    Clean accuracy (solid) and ASR (dashed, when recorded) against the fraction of channels pruned, as in Liu et al.'s
    Figure 4 and the thesis's Figure 4.19. The chosen pruning point is marked with a vertical dotted line.

    :param curves: One FinePruning report (or its ``pruning_curve``), a list of them, or a dict ``label -> report``.
    :param ax: Matplotlib axes to draw on (a new figure when omitted).
    :param title: Axes title.
    :param show_threshold: Draw the accuracy bound (start accuracy minus ``max_acc_drop``) when known.
    :return: The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if isinstance(curves, Mapping) and ("pruning_curve" in curves or "fraction" in curves):
        items = [("", curves)]
    elif isinstance(curves, Mapping):
        items = list(curves.items())
    elif hasattr(curves, "report_"):
        items = [("", curves)]
    else:
        items = [("", c) for c in curves]
    if not items:
        raise ValueError("plot_pruning_curve needs at least one curve.")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 4.0))
    else:
        fig = ax.figure
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, obj) in enumerate(items):
        curve = _as_curve(obj)
        colour = colours[i % len(colours)]
        frac = np.asarray(curve["fraction"], float)
        prefix = f"{label}: " if label else ""
        ax.plot(frac, curve["accuracy"], "-", color=colour, label=f"{prefix}clean accuracy")
        asr = np.asarray(curve.get("asr", []), float)
        if asr.size and not np.all(np.isnan(asr)):
            ax.plot(frac, asr, "--", color=colour, label=f"{prefix}ASR")
        if curve.get("chosen") is not None:
            ax.axvline(float(curve["chosen"]), color=colour, linestyle=":", linewidth=1)
        if show_threshold and curve.get("max_acc_drop") is not None:
            ax.axhline(float(curve["accuracy"][0]) - float(curve["max_acc_drop"]), color=colour, linestyle="-.",
                       linewidth=0.8, alpha=0.6)
    ax.set_xlabel("fraction of channels pruned")
    ax.set_ylabel("rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    return fig
