"""Plots for the adversarial embedding attack (Tan & Shokri, https://arxiv.org/abs/1905.13409, Figures 5 and 8)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def plot_embedding_history(history: Dict[str, List[float]], title: str = "Adversarial embedding"):
    """
    The game's losses per epoch (the paper's Figure 5): the classifier's cross-entropy, the discriminator's loss
    ``L_D`` and the objective the classifier minimised, with ``D``'s training and held-out accuracy on a second axis.

    :param history: ``AdversarialBackdoorEmbedding.history_``.
    """
    import matplotlib.pyplot as plt

    if not history or not history.get("ce"):
        raise ValueError("history is empty: run the attack first.")
    epochs = np.arange(1, len(history["ce"]) + 1)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, label in (("ce", "classifier CE"), ("d_loss", "discriminator $L_D$"), ("loss", "classifier objective")):
        ax.plot(epochs, history[key], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_xticks(epochs)
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    ax2.plot(epochs, history["d_acc"], marker="o", label="D accuracy (training batches)")
    if "val_d_acc" in history and np.isfinite(history["val_d_acc"]).any():
        ax2.plot(epochs, history["val_d_acc"], marker="s", label="D balanced accuracy (held out)")
    ax2.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax2.set_ylim(0.4, 1.02)
    ax2.set_xlabel("epoch")
    ax2.set_xticks(epochs)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_latent_projection(panels: Sequence[Tuple[str, np.ndarray]], is_poison: Sequence[bool],
                           seed: int = 0, max_points: Optional[int] = 2000):
    """
    Latents of one class projected on their top two principal components, poisoned in red, clean in blue, one panel
    per model (the paper's Figure 8 uses the top two independent components; PCA here).

    :param panels: ``[(title, features (N, D)), ...]``, e.g. naive and embedded model on the same images.
    :param is_poison: Ground truth for those images.
    """
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    b = np.asarray(is_poison, bool)
    if not panels:
        raise ValueError("panels is empty.")
    idx = np.arange(len(b))
    if max_points is not None and len(b) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(len(b), max_points, replace=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for ax, (title, feats) in zip(axes[0], panels):
        f = np.asarray(feats, np.float64).reshape(len(feats), -1)
        if len(f) != len(b):
            raise ValueError(f"panel {title!r} has {len(f)} rows but is_poison has {len(b)}.")
        p = PCA(n_components=2, random_state=seed).fit_transform(f)[idx]
        bb = b[idx]
        ax.scatter(p[~bb, 0], p[~bb, 1], s=5, c="tab:blue", alpha=0.5, label="clean")
        ax.scatter(p[bb, 0], p[bb, 1], s=5, c="tab:red", alpha=0.7, label="poisoned")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig
