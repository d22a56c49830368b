"""Transformer defences against poisoning: they return a repaired classifier."""
import importlib

_CLASSES = {"FinePruning": "fine_pruning"}

__all__ = list(_CLASSES)


def __getattr__(name):
    if name in _CLASSES:
        return getattr(importlib.import_module(f"{__name__}.{_CLASSES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
