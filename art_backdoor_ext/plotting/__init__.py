"""
Plots (matplotlib, loaded lazily): recovered patterns and reciprocal-statistic histograms, AEGIS cluster plots,
cluster-impurity diagnostics, pruning curves, error bars over seeds, adversarial-embedding losses and latent
projections. Each function returns a matplotlib ``Figure``.
"""
import importlib

# function name -> submodule of this package
_FUNCTIONS = {
    "plot_images": "common",
    "plot_pattern_comparison": "patterns",
    "plot_reciprocal_statistics": "patterns",
    "plot_clusters": "clusters",
    "plot_cluster_exemplars": "clusters",
    "plot_impurity": "impurity",
    "plot_pruning_curve": "pruning",
    "plot_error_bars": "errorbars",
    "plot_embedding_history": "embedding",
    "plot_latent_projection": "embedding",
}

__all__ = list(_FUNCTIONS)


def __getattr__(name):
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(f"{__name__}.{_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
