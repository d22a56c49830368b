"""Shared plotting helpers."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from art_backdoor_ext.layout import to_display  # noqa: F401  (one layout rule for the whole package)


def plot_images(images: Sequence[np.ndarray], titles: Optional[Sequence[str]] = None, ncols: int = 8,
                cmap: str = "gray", symmetric: bool = False, figsize_per: float = 1.6):
    """A grid of images; ``symmetric`` centres the colour map on 0 (for additive patterns)."""
    import matplotlib.pyplot as plt

    n = len(images)
    if n == 0:
        raise ValueError("No images to plot.")
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(figsize_per * ncols, figsize_per * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = to_display(images[i])
        if symmetric:
            lim = float(np.abs(img).max()) or 1.0
            ax.imshow(img if img.ndim == 2 else img.mean(-1), cmap="seismic", vmin=-lim, vmax=lim)
        else:
            ax.imshow(np.clip(img, 0, 1), cmap=cmap if img.ndim == 2 else None, vmin=0, vmax=1)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    fig.tight_layout()
    return fig
