"""PyTorch side of the framework adapter (``art.estimators.classification.PyTorchClassifier``)."""
from __future__ import annotations

import copy
import logging
from typing import List, Optional, Tuple

import numpy as np

from art_backdoor_ext.estimators.base import FrameworkAdapter

logger = logging.getLogger(__name__)


class PyTorchAdapter(FrameworkAdapter):
    """Adapter for ART's ``PyTorchClassifier``."""

    framework = "pytorch"

    @property
    def model(self):
        """The user's ``torch.nn.Module`` (ART keeps it inside a wrapper)."""
        return self.classifier.model

    @property
    def device(self):
        return self.classifier._device  # pylint: disable=protected-access

    @property
    def layer_names(self) -> List[str]:
        return [name for name, _ in self.model.named_modules() if name]

    def conv_layer_names(self) -> List[str]:
        import torch

        return [name for name, m in self.model.named_modules() if isinstance(m, torch.nn.Conv2d)]

    def module(self, name: str):
        """The module registered under ``name``."""
        return dict(self.model.named_modules())[self.resolve_layer(name)]

    def _declared_feature_layer(self) -> Optional[str]:
        return getattr(self.model, "feature_layer", None)

    def _to_tensor(self, x: np.ndarray):
        import torch

        x_pre, _ = self.classifier._apply_preprocessing(x, y=None, fit=False)  # pylint: disable=protected-access
        return torch.from_numpy(np.ascontiguousarray(x_pre, dtype=np.float32)).to(self.device)

    def _features_batch(self, x: np.ndarray, layer: str) -> np.ndarray:
        import torch

        store = {}
        handle = dict(self.model.named_modules())[layer].register_forward_hook(
            lambda _m, _i, out: store.__setitem__("out", out.detach())
        )
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self.model(self._to_tensor(x))
        finally:
            handle.remove()
            self.model.train(was_training)
        return store["out"].cpu().numpy()

    def log_prob_and_grad(self, x: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        import torch

        self.model.eval()
        x_t = self._to_tensor(x).requires_grad_(True)
        out = self.model(x_t)
        if isinstance(out, (tuple, list)):
            out = out[-1]
        if self._is_probability(out.detach().cpu().numpy()):
            logp = torch.log(out.clamp_min(1e-12))
        else:
            logp = torch.log_softmax(out, dim=1)
        idx = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=self.device)
        picked = logp.gather(1, idx[:, None])[:, 0]
        (grad,) = torch.autograd.grad(picked.sum(), x_t)
        grad = grad.cpu().numpy()
        grad = self.classifier._apply_preprocessing_gradient(x, grad)  # pylint: disable=protected-access
        return picked.detach().cpu().numpy(), grad

    def clone(self, reset_weights: bool = False):
        import torch
        from art.estimators.classification import PyTorchClassifier

        clf = self.classifier
        model = copy.deepcopy(self.model)
        if reset_weights:
            for m in model.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        optimizer = None
        if clf.optimizer is not None:
            opt = clf.optimizer
            optimizer = type(opt)(model.parameters(), **opt.defaults)
        return PyTorchClassifier(
            model=model,
            loss=clf._loss,  # pylint: disable=protected-access
            optimizer=optimizer,
            input_shape=clf.input_shape,
            nb_classes=clf.nb_classes,
            channels_first=clf.channels_first,
            clip_values=clf.clip_values,
            preprocessing_defences=clf.preprocessing_defences,
            postprocessing_defences=clf.postprocessing_defences,
            preprocessing=clf.preprocessing,
            device_type="gpu" if isinstance(self.device, torch.device) and self.device.type == "cuda" else "cpu",
        )

    def get_weights(self) -> List[np.ndarray]:
        return [t.detach().cpu().numpy().copy() for t in self.model.state_dict().values()]
