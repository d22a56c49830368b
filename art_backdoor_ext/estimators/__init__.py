"""
The framework adapter layer: the one place that knows PyTorch from Keras/TensorFlow.

Attacks and defences call :func:`get_adapter` and use the returned :class:`FrameworkAdapter`; they never import torch
or tensorflow themselves.
"""
from __future__ import annotations

import sys

from art_backdoor_ext.estimators.base import FrameworkAdapter

__all__ = ["FrameworkAdapter", "get_adapter", "framework_of", "load_torch_before_tensorflow"]


def load_torch_before_tensorflow() -> None:
    """
    With torch 2.14 and TensorFlow 2.21 in one process, torch's first optimizer import (which loads triton) segfaults
    if TensorFlow was imported before it. Every Keras code path of this package calls this first: when torch is
    installed and TensorFlow not yet loaded, it loads ``torch._dynamo`` (and so triton) now. A user who imports
    TensorFlow before anything else and later builds PyTorch models should ``import torch._dynamo`` first.
    """
    if "tensorflow" in sys.modules or "torch._dynamo" in sys.modules:
        return
    try:
        import torch._dynamo  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:  # torch not installed: nothing to order
        pass


def framework_of(classifier) -> str:
    """``"pytorch"`` or ``"keras"`` for a supported ART classifier; ``ValueError`` otherwise."""
    names = {cls.__name__ for cls in type(classifier).__mro__}
    if "PyTorchClassifier" in names:
        return "pytorch"
    if "KerasClassifier" in names or "TensorFlowV2Classifier" in names:
        return "keras"
    raise ValueError(
        f"Unsupported classifier {type(classifier).__name__}: use ART's PyTorchClassifier, KerasClassifier or "
        "TensorFlowV2Classifier."
    )


def get_adapter(classifier) -> FrameworkAdapter:
    """Return the framework adapter for an ART classifier (an adapter is returned unchanged)."""
    if isinstance(classifier, FrameworkAdapter):
        return classifier
    framework = framework_of(classifier)
    if framework == "pytorch":
        from art_backdoor_ext.estimators.pytorch import PyTorchAdapter

        return PyTorchAdapter(classifier)
    load_torch_before_tensorflow()
    from art_backdoor_ext.estimators.keras import KerasAdapter

    return KerasAdapter(classifier)
