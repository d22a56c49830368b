"""
art-backdoor-ext: backdoor (data-poisoning) attacks and defences for IBM's Adversarial Robustness Toolbox.

Importing this package loads no deep-learning framework; PyTorch and TensorFlow are imported lazily by the
modules that need them (``models``, ``estimators``).
"""
import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
