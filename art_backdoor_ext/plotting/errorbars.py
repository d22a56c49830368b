"""Error-bar charts of statistics with confidence intervals (the experiment grid's summary plot)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np


def plot_error_bars(labels: Sequence[str], panels: Dict[str, Sequence[Optional[Tuple[float, float, float]]]],
                    xlim: Tuple[float, float] = (-0.02, 1.02)):
    """
    One panel per statistic, one horizontal bar per label: the value as a dot, its confidence interval as an error
    bar (no bar where the interval is undefined, nothing where the value is ``None``).

    :param labels: Row labels (e.g. ``"scenario | defence"``).
    :param panels: Panel title -> one ``(value, low, high)`` or ``None`` per label.
    :param xlim: Horizontal range shared by the panels (rates and scores lie in [0, 1]).
    """
    import matplotlib.pyplot as plt

    if not labels:
        raise ValueError("No rows to plot.")
    if not panels:
        raise ValueError("No panel to plot.")
    for title, stats in panels.items():
        if len(stats) != len(labels):
            raise ValueError(f"Panel {title!r} has {len(stats)} entries for {len(labels)} labels.")
    n = len(labels)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 3.5, 0.32 * n + 1.2), sharey=True,
                             squeeze=False)
    y = np.arange(n)[::-1]
    for ax, (title, stats) in zip(axes[0], panels.items()):
        for yi, stat in zip(y, stats):
            if stat is None or not np.isfinite(stat[0]):
                continue
            value, low, high = stat
            if np.isfinite(low) and np.isfinite(high):  # (rounding can put the mean a hair outside its CI)
                err = [[max(value - low, 0.0)], [max(high - value, 0.0)]]
                ax.errorbar(value, yi, xerr=err, fmt="o", color="C0", capsize=3, ms=4)
            else:
                ax.plot(value, yi, "o", color="C0", ms=4)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(*xlim)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels(labels, fontsize=7)
    fig.tight_layout()
    return fig
