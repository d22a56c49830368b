"""
Poison-filtering defences (ART ``PoisonFilteringDefence`` subclasses). Classes load lazily so that importing this
package needs no deep-learning framework.
"""
import importlib

_CLASSES = {
    "AEGISDefence": "aegis",
    "ReverseEngineeringDefence": "reverse_engineering",
    "ClusterImpurityDefence": "cluster_impurity",
    "NeuralCleanseDefence": "neural_cleanse",
}

__all__ = list(_CLASSES)


def __getattr__(name):
    if name in _CLASSES:
        return getattr(importlib.import_module(f"{__name__}.{_CLASSES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
