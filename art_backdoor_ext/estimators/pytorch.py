"""PyTorch side of the framework adapter (``art.estimators.classification.PyTorchClassifier``)."""
from __future__ import annotations

import copy
import logging
from typing import List, Optional, Tuple

import numpy as np

from art_backdoor_ext.estimators.base import FrameworkAdapter
from art_backdoor_ext.utils import to_labels

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

    def log_prob_and_grad(self, x: np.ndarray, labels: np.ndarray,
                          complement: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        import torch

        self.model.eval()
        x_t = self._to_tensor(x).requires_grad_(True)
        logp = self._log_probs(x_t)
        idx = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=self.device)
        picked = logp.gather(1, idx[:, None])[:, 0]
        if complement is not None and np.any(complement):
            # log(1 - p_label) as the log-sum of the other classes' probabilities (stable when p_label -> 1)
            onehot = torch.nn.functional.one_hot(idx, logp.shape[1]).bool()
            other = torch.logsumexp(logp.masked_fill(onehot, float("-inf")), dim=1)
            comp = torch.as_tensor(np.asarray(complement, bool), device=self.device)
            picked = torch.where(comp, other, picked)
        (grad,) = torch.autograd.grad(picked.sum(), x_t)
        grad = grad.cpu().numpy()
        grad = self.classifier._apply_preprocessing_gradient(x, grad)  # pylint: disable=protected-access
        return picked.detach().cpu().numpy(), grad

    def final_softmax(self):
        """
        The model's last ``torch.nn.Softmax`` module over the class axis, or ``None``. Whether it really is the output
        layer is checked on every forward pass (:meth:`_log_probs`): the hook's output must be the model's output.
        """
        import torch

        found = None
        for module in self.model.modules():
            if isinstance(module, torch.nn.Softmax) and module.dim in (None, 1, -1):
                found = module
        return found

    def _log_probs(self, x_t):
        """
        Class log-probabilities ``(N, K)`` of one forward pass, differentiable with respect to ``x_t``.

        A model that ends in an ``nn.Softmax`` module gives ``log_softmax`` of that module's *input* (the logits), so
        that gradients never pass through saturated float32 probabilities (``log(p)`` of ``p == 1.0`` or of
        ``p < 1e-38`` has zero gradient). Other models' outputs are logits, or probabilities from a functional softmax
        that cannot be undone (logged once: their log-probabilities come from ``log(max(p, 1e-12))``).
        """
        import torch

        final = self.final_softmax()
        store = {}
        handle = None
        if final is not None:
            handle = final.register_forward_hook(lambda _m, inp, out: store.update(inp=inp[0], out=out))
        try:
            out = self.model(x_t)
        finally:
            if handle is not None:
                handle.remove()
        if isinstance(out, (tuple, list)):
            out = out[-1]
        if final is not None and store.get("out") is out and store["inp"].dim() == 2:
            return torch.log_softmax(store["inp"], dim=1)
        if self._is_probability(out.detach().cpu().numpy()):
            self._warn_saturated_probabilities()
            return torch.log(out.clamp_min(1e-12))
        return torch.log_softmax(out, dim=1)

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

    def _framework_rng_state(self):
        import torch

        return torch.get_rng_state()

    def _seed_framework(self, seed: int) -> None:
        import torch

        torch.manual_seed(seed)

    def _restore_framework_rng_state(self, state) -> None:
        import torch

        torch.set_rng_state(state)

    def get_weights(self) -> List[np.ndarray]:
        return [t.detach().cpu().numpy().copy() for t in self.model.state_dict().values()]

    # ----------------------------------------------------------------------------------------------- channel pruning
    def _channel_axis(self, layer: str) -> int:
        return 1

    def nb_channels(self, layer: Optional[str] = None) -> int:
        return int(self.module(self.resolve_conv_layer(layer)).out_channels)

    def prune_channels(self, layer: Optional[str], channels) -> None:
        """
        Persistent mask through ``torch.nn.utils.prune.custom_from_mask`` on the conv ``weight`` and ``bias``: the
        masks are buffers (``weight_mask``, ``bias_mask``) saved in the ``state_dict`` and pickled with the module, and
        the pruning hook recomputes ``weight = weight_orig * weight_mask`` before every forward pass, so masked
        channels stay zero through fine-tuning. Load a saved ``state_dict`` into a model pruned the same way (or
        pickle the whole module); ``torch.nn.utils.prune.remove`` bakes the zeros in.
        """
        import torch
        from torch.nn.utils import prune

        layer = self.resolve_conv_layer(layer)
        module = self.module(layer)
        idx = self._check_channels(channels, module.out_channels)
        if len(idx) == 0:
            return
        index = torch.as_tensor(idx, dtype=torch.long)
        for name in ("weight", "bias"):
            if getattr(module, name, None) is None:
                continue
            mask = getattr(module, name + "_mask", None)
            if mask is None:
                mask = torch.ones_like(getattr(module, name))
                mask[index] = 0
                prune.custom_from_mask(module, name, mask)
            else:
                with torch.no_grad():
                    mask[index] = 0  # the registered buffer, updated in place
                    setattr(module, name, getattr(module, name + "_orig") * mask)

    @staticmethod
    def _check_channels(channels, nb: int) -> np.ndarray:
        idx = np.unique(np.asarray(list(channels), dtype=np.int64))
        if idx.size and (idx.min() < 0 or idx.max() >= nb):
            raise ValueError(f"Channel indices must lie in [0, {nb}); got {idx.min()}..{idx.max()}.")
        return idx

    def pruned_channels(self, layer: Optional[str] = None) -> List[int]:
        module = self.module(self.resolve_conv_layer(layer))
        mask = getattr(module, "weight_mask", None)
        if mask is None:
            return []
        alive = mask.detach().reshape(mask.shape[0], -1).abs().sum(dim=1).cpu().numpy()
        return [int(c) for c in np.flatnonzero(alive == 0)]

    def channel_weight_norms(self, layer: Optional[str] = None) -> np.ndarray:
        module = self.module(self.resolve_conv_layer(layer))
        norms = np.zeros(module.out_channels)
        for name in ("weight", "bias"):
            orig = getattr(module, name + "_orig", None)
            if orig is not None:
                value = orig * getattr(module, name + "_mask")
            else:
                value = getattr(module, name, None)
            if value is not None:
                norms += value.detach().reshape(module.out_channels, -1).abs().sum(dim=1).cpu().numpy()
        return norms

    def _output_module(self):
        """``(name, module)`` of the last module that owns parameters and has ``reset_parameters`` (the head)."""
        head = None
        for name, module in self.model.named_modules():
            if hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False)):
                head = (name, module)
        if head is None:
            raise ValueError(f"{type(self.model).__name__} has no layer with parameters (no output layer).")
        return head

    def reset_output_layer(self, seed: Optional[int] = None) -> str:
        """The last module that owns parameters and has ``reset_parameters`` (a ``Linear`` head) is reset with
        PyTorch's default initialisation, drawn with ``seed``."""
        name, head = self._output_module()
        with self.seeded(seed):
            head.reset_parameters()
        return name

    def fit_output_layer(self, x: np.ndarray, y: np.ndarray, nb_epochs: int, learning_rate: float = 1e-2,
                         batch_size: int = 64, seed: Optional[int] = None) -> str:
        import torch

        name, head = self._output_module()
        labels = to_labels(y, self.nb_classes)
        store = {}
        handle = head.register_forward_hook(lambda _m, inp, out: store.update(inp=inp[0].detach(), out=out.detach()))
        was_training = self.model.training
        self.model.eval()
        feats = []
        try:
            with torch.no_grad():
                for i in range(0, len(x), 256):
                    out = self.model(self._to_tensor(x[i:i + 256]))
                    out = out[-1] if isinstance(out, (tuple, list)) else out
                    if i == 0 and not (torch.allclose(out, store["out"], atol=1e-5) or torch.allclose(
                            out, torch.softmax(store["out"], dim=1), atol=1e-5)):
                        raise ValueError(f"The last layer with parameters ({name!r}) is not the model's output (up to "
                                         "a softmax); fit_output_layer cannot retrain it alone.")
                    feats.append(store["inp"])
            feats_t = torch.cat(feats)
            target = torch.as_tensor(labels, dtype=torch.long, device=feats_t.device)
            optimizer = torch.optim.Adam(head.parameters(), lr=float(learning_rate))
            order = np.random.default_rng(seed)
            for _ in range(int(nb_epochs)):
                perm = order.permutation(len(feats_t))
                for i in range(0, len(perm), int(batch_size)):
                    idx = torch.as_tensor(perm[i:i + int(batch_size)], device=feats_t.device)
                    loss = torch.nn.functional.cross_entropy(head(feats_t[idx]), target[idx])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
        finally:
            handle.remove()
            self.model.train(was_training)
        return name

    def set_learning_rate(self, learning_rate: float) -> None:
        optimizer = self.classifier.optimizer
        if optimizer is None:
            raise ValueError("The classifier has no optimizer; create the PyTorchClassifier with one to fine-tune it.")
        for group in optimizer.param_groups:
            group["lr"] = float(learning_rate)

    def get_learning_rate(self) -> float:
        optimizer = self.classifier.optimizer
        if optimizer is None:
            raise ValueError("The classifier has no optimizer; create the PyTorchClassifier with one to fine-tune it.")
        return float(optimizer.param_groups[0]["lr"])

    # ----------------------------------------------------------------------------------------------- weights on disk
    weights_suffix = ".pt"

    def save_weights(self, path: str) -> None:
        """The model's ``state_dict`` (tensors moved to the CPU) through ``torch.save``."""
        import torch

        torch.save({name: t.detach().cpu() for name, t in self.model.state_dict().items()}, path)

    def load_weights(self, path: str) -> None:
        """``torch.load(path, weights_only=True)`` (tensors only, no pickled code) mapped to the classifier's device."""
        import torch

        state = torch.load(path, map_location=self.device, weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict.")
        self.model.load_state_dict(state)

    # ------------------------------------------------------------------------------------------ adversarial embedding
    def _embedding_session(self, layer: str, dim: int, learning_rate: float, learning_rate_d: float, seed: int,
                           objective: str = "paper"):
        return _TorchEmbeddingSession(self, layer, dim, learning_rate, learning_rate_d, seed, objective)


    def _channel_suppression_step(self, layer: str, weight: np.ndarray, learning_rate: float):
        import torch

        model = self.model
        module = self.module(layer)
        opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
        w = torch.as_tensor(weight, device=self.device).reshape(1, -1, 1, 1)
        probability = {}  # whether the model outputs probabilities: checked on the first batch only

        def step(x, labels, lam):
            store = {}
            handle = module.register_forward_hook(lambda _m, _i, out: store.__setitem__("out", out))
            was_training = model.training
            model.train()
            try:
                out = model(self._to_tensor(x))
            finally:
                handle.remove()
            if isinstance(out, (tuple, list)):
                out = out[-1]
            z = torch.relu(store["out"])
            mse = torch.mean((z - z.detach() * w) ** 2)
            if "p" not in probability:
                probability["p"] = self._is_probability(out.detach().cpu().numpy())
            if probability["p"]:
                logp = torch.log(out.clamp_min(1e-12))
            else:
                logp = torch.log_softmax(out, dim=1)
            ce = torch.nn.functional.nll_loss(logp, torch.as_tensor(labels, dtype=torch.long, device=logp.device))
            loss = ce + lam * mse
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.train(was_training)
            return np.array([float(ce.detach()), float(mse.detach()), float(loss.detach())])

        return step


class _TorchEmbeddingSession:
    """One adversarial-embedding game on a PyTorch model (see ``FrameworkAdapter.train_adversarial_embedding``)."""

    def __init__(self, adapter: PyTorchAdapter, layer: str, dim: int, learning_rate: float, learning_rate_d: float,
                 seed: int, objective: str = "paper") -> None:
        import torch
        from torch import nn

        self.adapter = adapter
        self.objective = objective
        self.model = adapter.model
        with adapter.seeded(seed):  # D's initial weights from a seeded, then restored, global generator
            self.d = nn.Sequential(
                nn.Linear(dim, 256), nn.LeakyReLU(0.2), nn.BatchNorm1d(256),
                nn.Linear(256, 128), nn.LeakyReLU(0.2), nn.BatchNorm1d(128),
                nn.Linear(128, 1),
            ).to(adapter.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=learning_rate_d)
        self.module = dict(self.model.named_modules())[layer]
        self.bce = nn.BCEWithLogitsLoss()

    def _forward(self, x: np.ndarray):
        store = {}
        handle = self.module.register_forward_hook(lambda _m, _i, out: store.__setitem__("out", out))
        try:
            out = self.model(self.adapter._to_tensor(x))  # pylint: disable=protected-access
        finally:
            handle.remove()
        if isinstance(out, (tuple, list)):
            out = out[-1]
        return out, store["out"].reshape(len(x), -1)

    @staticmethod
    def _mmd2(a, b):
        """Squared MMD of two latent batches, Gaussian kernels at 1/4, 1, 4 x the median squared distance."""
        import torch

        z = torch.cat([a, b])
        d2 = torch.cdist(z, z).pow(2)
        med = d2.detach().median().clamp_min(1e-6)
        k = sum(torch.exp(-d2 / (scale * med)) for scale in (0.25, 1.0, 4.0))
        n = len(a)
        return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()

    def step(self, x_ce, y_ce, x_d, y_d, b_d, noise, lam, mmd=0.0):
        import torch

        n = len(x_ce)
        was_training = self.model.training
        self.model.train()
        self.d.train()
        out, feats = self._forward(np.concatenate([x_ce, x_d]))
        f_d = feats[n:]
        b = torch.as_tensor(b_d, device=self.adapter.device)[:, None]
        noise_t = torch.as_tensor(noise, device=self.adapter.device)
        d_losses, d_accs = [], []
        for k in range(len(noise) - 1):  # D's turn: minimise L_D on the detached latents
            logits_d = self.d(f_d.detach() + noise_t[k])
            loss_d = self.bce(logits_d, b)
            self.opt_d.zero_grad()
            loss_d.backward()
            self.opt_d.step()
            d_losses.append(float(loss_d.detach()))
            d_accs.append(float(((logits_d.detach() > 0).float() == b).float().mean()))
        for p in self.d.parameters():  # the classifier's turn: D frozen
            p.requires_grad_(False)
        try:
            logits_adv = self.d(f_d + noise_t[-1])
            adv = self.bce(logits_adv, b)
            if self.adapter._is_probability(out.detach().cpu().numpy()):  # pylint: disable=protected-access
                logp = torch.log(out.clamp_min(1e-12))
            else:
                logp = torch.log_softmax(out, dim=1)
            y_all = np.concatenate([y_ce, y_d])
            ce = torch.nn.functional.nll_loss(logp, torch.as_tensor(y_all, dtype=torch.long, device=logp.device))
            if self.objective == "confusion":  # push D's output to 1/2 on every latent
                loss = ce + lam * self.bce(logits_adv, torch.full_like(b, 0.5))
            elif self.objective == "flip":  # make the poisoned latents look clean to D (non-saturating)
                poisoned = b[:, 0] > 0.5
                loss = ce + lam * self.bce(logits_adv[poisoned], torch.zeros_like(b[poisoned]))
            else:  # Eq. 5: maximise D's loss
                loss = ce - lam * adv
            if mmd > 0:  # pull the poisoned latents' distribution onto the (fixed) reference latents'
                poisoned = b[:, 0] > 0.5
                loss = loss + mmd * self._mmd2(f_d[poisoned], f_d[~poisoned].detach())
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        finally:
            for p in self.d.parameters():
                p.requires_grad_(True)
            self.model.train(was_training)
        return np.array([float(ce.detach()), np.mean(d_losses) if d_losses else np.nan, float(adv.detach()),
                         np.mean(d_accs) if d_accs else np.nan, float(loss.detach())])

    def predict(self, features: np.ndarray) -> np.ndarray:
        import torch

        self.d.eval()
        with torch.no_grad():
            logits = self.d(torch.as_tensor(np.asarray(features, np.float32), device=self.adapter.device))
        return torch.sigmoid(logits)[:, 0].cpu().numpy()
