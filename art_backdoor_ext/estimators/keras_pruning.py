"""
Keras helpers for channel pruning (used by :class:`~art_backdoor_ext.estimators.keras.KerasAdapter`).

* :func:`channel_mask_class` returns ``ChannelMask``, a registered, serialisable kernel/bias constraint that multiplies
  a convolution's output channels by a 0/1 mask. Keras applies variable constraints after every optimizer step, so
  pruned channels stay zero through fine-tuning, and the mask is part of the layer config, so it survives
  ``model.save`` / ``keras.models.load_model`` and ``clone_model``. Importing this module registers the Keras 3 class
  (``art_backdoor_ext>ChannelMask``), which is all ``load_model`` needs in a fresh process.
* :func:`delete_channels` wraps keras-surgeon's ``delete_channels`` (tf.keras / Keras 2 models only, i.e. under
  ``TF_USE_LEGACY_KERAS=1``) with the compatibility shim it needs on TensorFlow 2.21: keras-surgeon's
  ``utils.single_element`` calls ``len()`` on symbolic Keras tensors (upstream issues #57/#61), and its mask
  propagation does not know the element-wise ``ReLU`` layer (treated here as a pass-through, like ``Activation``).
  keras-surgeon: https://github.com/BenWhetton/keras-surgeon
"""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Dict, List, Sequence

import numpy as np

logger = logging.getLogger(__name__)

_MASK_CLASSES: Dict[str, type] = {}
_PASS_THROUGH = ("ReLU", "Softmax")


def is_legacy_model(model) -> bool:
    """True for a tf.keras (Keras 2, ``tf_keras``) model, False for a Keras 3 model."""
    return type(model).__module__.startswith("tf_keras")


def keras_module_of(model):
    """The Keras package a model belongs to: ``tf_keras`` for legacy tf.keras models, else Keras 3's ``keras``."""
    if is_legacy_model(model):
        import tf_keras

        return tf_keras
    import keras

    return keras


def channel_mask_class(kmod):
    """The serialisable ``ChannelMask`` constraint class for a Keras package (``keras`` or ``tf_keras``)."""
    key = kmod.__name__
    if key in _MASK_CLASSES:
        return _MASK_CLASSES[key]

    @kmod.saving.register_keras_serializable(package="art_backdoor_ext")
    class ChannelMask(kmod.constraints.Constraint):
        """
        Zeroes the output channels listed in ``pruned`` (last axis of a conv kernel or of a bias) after every update.

        :param pruned: Indices of the pruned output channels.
        :param nb_channels: Number of output channels of the layer.
        """

        def __init__(self, pruned: Sequence[int] = (), nb_channels: int = 0) -> None:
            self.pruned = sorted(int(c) for c in pruned)
            self.nb_channels = int(nb_channels)
            mask = np.ones(self.nb_channels, np.float32)
            mask[self.pruned] = 0.0
            self._mask = mask

        def __call__(self, w):
            import tensorflow as tf

            return w * tf.constant(self._mask, dtype=w.dtype)

        def get_config(self) -> dict:
            return {"pruned": list(self.pruned), "nb_channels": self.nb_channels}

    _MASK_CLASSES[key] = ChannelMask
    return ChannelMask


def _set_constraint(variable, constraint) -> None:
    try:
        variable.constraint = constraint
    except AttributeError:  # tf.Variable (tf.keras) exposes constraint read-only
        variable._constraint = constraint  # pylint: disable=protected-access


def mask_channels(layer, channels: Sequence[int]) -> List[int]:
    """
    Add ``channels`` to the persistent channel mask of a Keras convolution layer (in place): the kernel and bias of
    those channels are set to zero and a ``ChannelMask`` constraint keeps them there. Returns all pruned channels.
    """
    kmod = keras_module_of_layer(layer)
    mask_cls = channel_mask_class(kmod)
    nb = int(layer.filters)
    pruned = set(masked_channels(layer)) | {int(c) for c in channels}
    old = getattr(layer, "kernel_constraint", None)
    if old is not None and not isinstance(old, mask_cls):
        logger.warning("Replacing the kernel constraint %r of layer %s by a channel mask.", old, layer.name)
    constraint = mask_cls(sorted(pruned), nb)
    targets = [("kernel_constraint", layer.kernel)]
    if getattr(layer, "use_bias", False) and layer.bias is not None:
        targets.append(("bias_constraint", layer.bias))
    for attr, variable in targets:
        setattr(layer, attr, constraint)
        _set_constraint(variable, constraint)
        variable.assign(constraint(variable))
    return sorted(pruned)


def masked_channels(layer) -> List[int]:
    """The channels masked by a ``ChannelMask`` on a Keras layer's kernel (``[]`` when none)."""
    constraint = getattr(layer, "kernel_constraint", None)
    return list(getattr(constraint, "pruned", [])) if type(constraint).__name__ == "ChannelMask" else []


def keras_module_of_layer(layer):
    """The Keras package a layer belongs to."""
    if type(layer).__module__.startswith("tf_keras"):
        import tf_keras

        return tf_keras
    import keras

    return keras


def _patch_kerassurgeon():
    import kerassurgeon.utils as ks_utils
    from kerassurgeon.surgeon import Surgeon

    if getattr(Surgeon, "_art_backdoor_ext_patched", False):
        return

    def single_element(x):
        """If x is a list or tuple of one element, return it; otherwise return x (symbolic tensors have no len)."""
        if isinstance(x, (list, tuple)):
            return x[0] if len(x) == 1 else x
        return x

    original = Surgeon._apply_delete_mask  # pylint: disable=protected-access

    def apply_delete_mask(self, node, inbound_masks):
        if type(node.outbound_layer).__name__ in _PASS_THROUGH and not all(m is None for m in inbound_masks):
            return node.outbound_layer, single_element(inbound_masks)  # element-wise: the mask passes through
        return original(self, node, inbound_masks)

    ks_utils.single_element = single_element
    Surgeon._apply_delete_mask = apply_delete_mask  # pylint: disable=protected-access
    Surgeon._art_backdoor_ext_patched = True  # pylint: disable=protected-access


def delete_channels(model, layer_name: str, channels: Sequence[int]):
    """
    keras-surgeon's ``delete_channels`` on a copy of a tf.keras model (the original is untouched): a new, narrower model
    without the given output channels of ``layer_name`` and the matching input weights of the layers downstream.

    :raises ValueError: For a Keras 3 model (keras-surgeon needs the Keras 2 API: set ``TF_USE_LEGACY_KERAS=1`` before
                        importing TensorFlow and build the model with ``tf.keras``).
    """
    if not is_legacy_model(model):
        raise ValueError("keras-surgeon only handles tf.keras (Keras 2) models: set TF_USE_LEGACY_KERAS=1 before "
                         "TensorFlow is imported and build the model with tf.keras; Keras 3 models are pruned with a "
                         "persistent channel mask instead (method='mask').")
    try:
        _patch_kerassurgeon()
        from kerassurgeon import operations
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("keras-surgeon is needed for physical channel removal: "
                          "pip install --no-deps kerassurgeon==0.2.0 importlib-metadata") from err
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):  # keras-surgeon prints its progress
        new_model = operations.delete_channels(model, model.get_layer(layer_name), [int(c) for c in channels],
                                               copy=True)
    if buffer.getvalue().strip():
        logger.info("keras-surgeon: %s", buffer.getvalue().strip())
    return new_model


# register the Keras 3 class on import, so that keras.models.load_model finds it in a fresh process
try:  # pragma: no cover - keras is a dependency, but keep importing this module cheap and safe
    import keras as _keras

    channel_mask_class(_keras)
except ImportError:  # pragma: no cover
    pass
