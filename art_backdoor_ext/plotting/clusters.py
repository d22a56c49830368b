"""AEGIS plots: t-SNE embeddings coloured by mean-shift cluster (paper Figures 4-6) and translated exemplars (Fig. 7)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from art_backdoor_ext.plotting.common import to_display


def _cluster_data(source: Any, cls: int) -> Dict[str, Any]:
    """Accept an :class:`AEGISDefence` (after ``detect_poison``) or a dict from its ``cluster_data(cls)``."""
    if hasattr(source, "cluster_data"):
        return source.cluster_data(cls)
    if isinstance(source, dict) and "embedding" in source:
        return source
    if isinstance(source, dict) and "clusters" in source and cls in source["clusters"]:
        return source["clusters"][cls]
    raise ValueError("Pass an AEGISDefence after detect_poison() or a dict from AEGISDefence.cluster_data(cls) "
                     "(a report alone does not hold the embeddings).")


def plot_clusters(source: Any, cls: int, ax=None, title: Optional[str] = None):
    """
    The t-SNE embedding of one class's training and translated features, coloured by mean-shift cluster; training
    points are dots, translated points crosses.

    :param source: :class:`~art_backdoor_ext.defences.detector.poison.AEGISDefence` after ``detect_poison`` or a dict
                   from its ``cluster_data(cls)``.
    :param cls: The class.
    :param ax: Optional matplotlib axes to draw into.
    :param title: Optional title (default: class and cluster count).
    :return: The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    data = _cluster_data(source, cls)
    emb, labels, translated = data["embedding"], np.asarray(data["labels"]), np.asarray(data["is_translated"], bool)
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.0))
    else:
        fig = ax.figure
    cmap = plt.get_cmap("tab10")
    for j, c in enumerate(np.unique(labels)):
        m = labels == c
        colour = cmap(j % 10)
        ax.scatter(emb[m & ~translated, 0], emb[m & ~translated, 1], s=6, color=colour, marker="o",
                   label=f"cluster {c}: {int(np.sum(m & ~translated))} train")
        ax.scatter(emb[m & translated, 0], emb[m & translated, 1], s=14, color=colour, marker="x",
                   label=f"cluster {c}: {int(np.sum(m & translated))} translated")
    n = len(np.unique(labels))
    ax.set_title(title or f"class {cls}: {n} clusters", fontsize=9)
    ax.legend(fontsize=6, markerscale=1.5, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_cluster_exemplars(source: Any, cls: int, nb_per_cluster: int = 8, seed: int = 0):
    """
    Translated images of one class, one row per mean-shift cluster that holds translated images (largest first), so a
    user can see what the model learnt for the class (the trigger shows up in the backdoor cluster).

    :param source: An AEGISDefence after ``detect_poison`` or a dict from its ``cluster_data(cls)``.
    :param cls: The class.
    :param nb_per_cluster: Images per row.
    :param seed: Seed for picking the exemplars.
    :return: The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    data = _cluster_data(source, cls)
    labels, translated = np.asarray(data["labels"]), np.asarray(data["is_translated"], bool)
    images = np.asarray(data["translated"])
    trans_labels = labels[translated]
    ids, counts = np.unique(trans_labels, return_counts=True)
    ids = ids[np.argsort(-counts)]
    if len(ids) == 0:
        raise ValueError(f"Class {cls} has no translated images to show.")
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(ids), nb_per_cluster, figsize=(1.2 * nb_per_cluster, 1.35 * len(ids)),
                             squeeze=False)
    for r, c in enumerate(ids):
        members = np.flatnonzero(trans_labels == c)
        pick = rng.choice(members, size=min(nb_per_cluster, len(members)), replace=False)
        for j, ax in enumerate(axes[r]):
            ax.axis("off")
            if j < len(pick):
                img = to_display(images[pick[j]])
                ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        axes[r][0].set_title(f"cluster {c} ({len(members)})", fontsize=7, loc="left")
    fig.suptitle(f"class {cls}: translated images per cluster", fontsize=9)
    fig.tight_layout()
    return fig
