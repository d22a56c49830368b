"""
Neural Cleanse for every framework of the adapter (PyTorch and Keras), batched over the candidate target classes.

Wang, Yao, Shan, Li, Viswanath, Zheng, Zhao: *Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural
Networks*, IEEE S&P 2019 (https://people.cs.uchicago.edu/~ravenben/publications/pdf/backdoor-sp19.pdf).

For every candidate target ``t`` a mask ``m`` (one value in [0, 1] per pixel, shared by the channels) and a pattern
``p`` (in the input range) are optimised so that stamped clean images ``(1 - m) * x + m * p`` are classified as ``t``
while ``|m|_1`` stays small: ``CE(f(stamp(x)), t) + cost * |m|_1``. The cost follows the paper's schedule: it starts
at 0; once the stamp succeeds (attack success >= ``attack_success_threshold``) for ``patience`` epochs it is set to
``init_cost``; then it is multiplied by ``cost_multiplier`` after ``patience`` successful epochs and divided by
``cost_multiplier ** 1.5`` after ``patience`` failing ones. The smallest successful mask is kept, and a target stops
early when its best mask has not shrunk by 1% for ``early_stop_patience`` epochs after the cost has gone both up and
down (the authors' code). A label whose mask norm lies *below*
the median with an anomaly index ``|norm - median| / (1.4826 MAD)`` above ``anomaly_threshold`` (2) is infected.

Implementation notes and deviations:

* All K targets are optimised together: each step stamps one batch of clean images with the K masks/patterns and
  gets every per-image input gradient from one forward/backward pass of the framework adapter; the gradients of the
  mask and the pattern follow by the chain rule (``dL/dm = sum_c dL/dx' (p - x)``, ``dL/dp = dL/dx' m``) through the
  authors' tanh parametrisation, with Adam (learning rate 0.1, as the authors' code) in numpy.
* Attack success on a batch is counted as ``p_t > 0.5`` (a sufficient condition for ``argmax = t``, so slightly
  stricter than the paper's accuracy), which spares a second forward pass per step.
* ``is_clean`` (filtering, after the paper's Section VI.B): the ``neuron_ratio`` share of feature-layer neurons that
  the reversed trigger (stamped on other classes' images) raises most above the target class's median activation are
  the trigger's neurons; a training image of the detected target class is flagged when its mean activation of those
  neurons lies above the midpoint between the class's median score and the stamped images' median score. The paper
  sets the threshold at a 5% false-positive rate on clean inputs at run time; on a training set the clean images of
  the target class are unknown, and their own features activate the target's neurons (a threshold from other classes
  flagged most clean images of the target class), hence the two-population midpoint.
* :meth:`mitigate` is the paper's unlearning: fine-tune a copy of the model on clean data of which ``unlearn_ratio``
  (20%) is stamped with the reversed trigger and keeps its true label.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from art_backdoor_ext.defences.base import PoisonFilteringDefenceBase
from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.metrics import mad_anomaly_index
from art_backdoor_ext.utils import check_bool, check_int, check_layer_name, check_number, check_xy, progress

logger = logging.getLogger(__name__)


class NeuralCleanseDefence(PoisonFilteringDefenceBase):
    """
    Neural Cleanse (Wang et al.) as an ART poison-filtering defence for PyTorch and Keras classifiers; see the module
    docstring for the method and every deviation from the paper.

    :param classifier: A trained ART classifier (PyTorch or Keras).
    :param x_train: Training images (the classifier's layout); their clean share drives the optimisation.
    :param y_train: Training labels, integer or one-hot.
    :param init_cost: First non-zero cost of the mask's L1 norm (paper: 1e-3).
    :param cost_multiplier: Factor of the cost schedule (paper: 1.5 up, 1.5 ** 1.5 down).
    :param patience: Epochs of success (failure) before the cost goes up (down) (paper: 5).
    :param attack_success_threshold: Attack success that counts as a working trigger (paper: 0.99).
    :param nb_epochs: Epochs of the optimisation (an epoch = ``steps_per_epoch`` steps).
    :param steps_per_epoch: Optimisation steps per epoch.
    :param batch_size: Clean images stamped per step (the same images for every target).
    :param learning_rate: Adam learning rate in the tanh space (authors' code: 0.1).
    :param early_stop_patience: Epochs without a 1% smaller best mask before a target stops.
    :param anomaly_threshold: Anomaly index above which a small mask flags its label (paper: 2).
    :param layer: Feature layer for filtering (``None`` = penultimate layer).
    :param neuron_ratio: Share of the feature-layer neurons taken as the trigger's neurons for filtering.
    :param seed: Seed of the batch sampling and the initial masks.
    :param verbose: Progress bar over epochs.
    """

    defence_params = PoisonFilteringDefenceBase.defence_params + [
        "init_cost", "cost_multiplier", "patience", "attack_success_threshold", "nb_epochs", "steps_per_epoch",
        "batch_size", "learning_rate", "early_stop_patience", "anomaly_threshold", "layer", "neuron_ratio",
        "seed"]

    def __init__(self, classifier, x_train: np.ndarray, y_train: np.ndarray, init_cost: float = 1e-3,
                 cost_multiplier: float = 1.5, patience: int = 5, attack_success_threshold: float = 0.99,
                 nb_epochs: int = 40, steps_per_epoch: int = 5, batch_size: int = 32, learning_rate: float = 0.1,
                 early_stop_patience: int = 10, anomaly_threshold: float = 2.0, layer: Optional[str] = None,
                 neuron_ratio: float = 0.05, seed: int = 0, verbose: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(classifier, x_train, y_train)
        self._init_params(init_cost=init_cost, cost_multiplier=cost_multiplier, patience=patience,
                          attack_success_threshold=attack_success_threshold, nb_epochs=nb_epochs,
                          steps_per_epoch=steps_per_epoch, batch_size=batch_size, learning_rate=learning_rate,
                          early_stop_patience=early_stop_patience, anomaly_threshold=anomaly_threshold, layer=layer,
                          neuron_ratio=neuron_ratio, seed=seed, verbose=verbose, **kwargs)
        self.masks_: Optional[np.ndarray] = None
        self.patterns_: Optional[np.ndarray] = None

    def _check_params(self) -> None:
        check_number("init_cost", self.init_cost, low=0, low_open=True, hint="the paper uses 1e-3")
        check_number("cost_multiplier", self.cost_multiplier, low=1, low_open=True, hint="the paper uses 1.5")
        check_int("patience", self.patience, low=1, hint="the paper uses 5")
        check_number("attack_success_threshold", self.attack_success_threshold, low=0, high=1, low_open=True,
                     hint="the paper uses 0.99")
        check_int("nb_epochs", self.nb_epochs, low=1)
        check_int("steps_per_epoch", self.steps_per_epoch, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_number("learning_rate", self.learning_rate, low=0, low_open=True)
        check_int("early_stop_patience", self.early_stop_patience, low=1)
        check_number("anomaly_threshold", self.anomaly_threshold, low=0, low_open=True, hint="the paper uses 2")
        check_layer_name("layer", self.layer)
        self._adapter.resolve_layer(self.layer)
        check_number("neuron_ratio", self.neuron_ratio, low=0, high=1, low_open=True)
        check_int("seed", self.seed, low=0)
        check_bool("verbose", self.verbose)

    # ----------------------------------------------------------------------------------------------- reverse
    def _mask_axes(self) -> Tuple[int, Tuple[int, ...]]:
        """The channel axis of one image and the shape of a mask (the image without its channel axis)."""
        shape = self._adapter.input_shape
        axis = 0 if self._adapter.channels_first else len(shape) - 1
        return axis, tuple(s for i, s in enumerate(shape) if i != axis)

    def reverse_engineer(self) -> Dict[str, Any]:
        """
        Optimise a mask and a pattern for every candidate target class, all targets in shared batched passes.

        :return: ``masks`` (K x mask shape), ``patterns`` (K x image shape), ``l1_norms``, ``attack_success``,
                 ``converged`` (a successful mask was found), ``epochs`` (per target) and ``seconds``.
        """
        start = time.perf_counter()
        adapter = self._adapter
        x, labels = self._data()
        k = adapter.nb_classes
        lo, hi = adapter.clip_values
        axis, mask_shape = self._mask_axes()
        rng = np.random.default_rng(self.seed)
        img_shape = x.shape[1:]
        # unconstrained parameters (the authors' tanh parametrisation); masks start small, patterns random
        w_mask = np.full((k,) + mask_shape, np.arctanh(2 * 0.1 - 1), np.float64)
        w_pat = rng.uniform(-1, 1, (k,) + img_shape) * 0.5
        adam = {name: [np.zeros_like(w), np.zeros_like(w)] for name, w in (("m", w_mask), ("p", w_pat))}
        cost = np.zeros(k)
        up = np.zeros(k, int)
        down = np.zeros(k, int)
        raised = np.zeros(k, bool)  # the cost went up (down) at least once: the schedule has explored both ways
        lowered = np.zeros(k, bool)
        set_counter = np.zeros(k, int)
        best_l1 = np.full(k, np.inf)
        best_mask = np.zeros((k,) + mask_shape)
        best_pat = np.zeros((k,) + img_shape)
        since_best = np.zeros(k, int)
        last_best = np.full(k, np.inf)
        active = np.ones(k, bool)
        epochs = np.zeros(k, int)
        success = np.zeros(k)
        targets = np.arange(k)
        step = 0
        b = int(self.batch_size)

        def expand(mask):  # (n,) + mask_shape -> (n,) + image shape, broadcast over channels
            return np.expand_dims(mask, axis + 1)

        for epoch in progress(range(int(self.nb_epochs)), self.verbose, desc="Neural Cleanse", unit="epoch"):
            act = np.flatnonzero(active)
            if len(act) == 0:
                break
            hits = np.zeros(len(act))
            for _ in range(int(self.steps_per_epoch)):
                step += 1
                idx = rng.choice(len(x), size=min(b, len(x)), replace=False)
                xb = x[idx].astype(np.float64)
                m = (np.tanh(w_mask[act]) + 1) / 2
                p = (np.tanh(w_pat[act]) + 1) / 2 * (hi - lo) + lo
                me = expand(m)[:, None]                                     # (a, 1, ...)
                stamped = (1 - me) * xb[None] + me * p[:, None]             # (a, b, ...)
                logp, grad = adapter.log_prob_and_grad(stamped.reshape((-1,) + img_shape).astype(np.float32),
                                                       np.repeat(targets[act], len(idx)))
                hits += (np.exp(logp.reshape(len(act), -1)) > 0.5).mean(axis=1)
                g = -grad.reshape(stamped.shape).astype(np.float64) / len(idx)  # dCE/dx'
                g_mask = (g * (p[:, None] - xb[None])).sum(axis=(1, axis + 2)) + cost[act].reshape(
                    (-1,) + (1,) * len(mask_shape))
                g_pat = (g * me).sum(axis=1)
                g_wm = g_mask * (1 - np.tanh(w_mask[act]) ** 2) / 2
                g_wp = g_pat * (1 - np.tanh(w_pat[act]) ** 2) / 2 * (hi - lo)
                for name, w, gw in (("m", w_mask, g_wm), ("p", w_pat, g_wp)):
                    m1, m2 = adam[name]
                    m1[act] = 0.9 * m1[act] + 0.1 * gw
                    m2[act] = 0.999 * m2[act] + 0.001 * gw * gw
                    corr1, corr2 = 1 - 0.9 ** step, 1 - 0.999 ** step
                    w[act] -= self.learning_rate * (m1[act] / corr1) / (np.sqrt(m2[act] / corr2) + 1e-8)
            rate = hits / self.steps_per_epoch
            success[act] = rate
            epochs[act] = epoch + 1
            m = (np.tanh(w_mask[act]) + 1) / 2
            l1 = m.reshape(len(act), -1).sum(axis=1)
            ok = rate >= self.attack_success_threshold
            better = ok & (l1 < best_l1[act])
            best_l1[act[better]] = l1[better]
            best_mask[act[better]] = m[better]
            best_pat[act[better]] = ((np.tanh(w_pat[act]) + 1) / 2 * (hi - lo) + lo)[better]
            # the paper's cost schedule
            zero = cost[act] == 0
            set_counter[act] = np.where(zero & ok, set_counter[act] + 1, np.where(zero, 0, set_counter[act]))
            start_cost = zero & (set_counter[act] >= self.patience)
            cost[act[start_cost]] = self.init_cost
            up[act] = np.where(ok, up[act] + 1, 0)
            down[act] = np.where(ok, 0, down[act] + 1)
            raise_ = ~zero & (up[act] >= self.patience)
            lower = ~zero & (down[act] >= self.patience)
            cost[act[raise_]] *= self.cost_multiplier
            cost[act[lower]] /= self.cost_multiplier ** 1.5
            up[act[raise_]] = 0
            down[act[lower]] = 0
            raised[act[raise_]] = True
            lowered[act[lower]] = True
            # early stop: the best mask has not shrunk by 1% for early_stop_patience epochs
            improved = best_l1[act] < 0.99 * last_best[act]
            last_best[act[improved]] = best_l1[act[improved]]
            since_best[act] = np.where(improved, 0, since_best[act] + 1)
            stop = (np.isfinite(best_l1[act]) & (since_best[act] >= self.early_stop_patience) & raised[act]
                    & lowered[act])
            active[act[stop]] = False
        converged = np.isfinite(best_l1)
        final_mask = (np.tanh(w_mask) + 1) / 2
        final_pat = (np.tanh(w_pat) + 1) / 2 * (hi - lo) + lo
        masks = np.where(expand_all(converged, best_mask.ndim), best_mask, final_mask)
        patterns = np.where(expand_all(converged, best_pat.ndim), best_pat, final_pat)
        return {"masks": masks.astype(np.float32), "patterns": patterns.astype(np.float32),
                "l1_norms": masks.reshape(k, -1).sum(axis=1), "attack_success": success, "converged": converged,
                "epochs": epochs, "seconds": time.perf_counter() - start}

    def stamp(self, x: np.ndarray, target: int) -> np.ndarray:
        """``x`` stamped with the reversed trigger of ``target`` (after :meth:`detect_poison`)."""
        if self.masks_ is None:
            raise ValueError("Run detect_poison() first: there is no reversed trigger yet.")
        x = self._adapter.check_input(x, "x")
        axis, _ = self._mask_axes()
        m = np.expand_dims(self.masks_[target], axis)[None]
        return ((1 - m) * x + m * self.patterns_[target][None]).astype(np.float32)

    # ----------------------------------------------------------------------------------------------- ART API
    def detect_poison(self, **kwargs) -> Tuple[Dict[str, Any], List[int]]:
        """
        Reverse-engineer a trigger per class, detect infected labels by the anomaly index, and filter the training
        images of an infected label that activate the trigger's neurons.

        :param kwargs: Any of :attr:`defence_params`, set (atomically) before running.
        :return: ``(report, is_clean)``. The report has ``detected``, ``target_class``, ``suspected_classes``,
                 ``l1_norms``, ``anomaly_index`` (per class, signed: negative = smaller than the median),
                 ``attack_success``, ``converged``, ``masks``, ``patterns``, ``trigger_neurons``,
                 ``filter_threshold``, ``nb_flagged``, ``inconclusive`` and ``seconds``. ``inconclusive`` is
                 ``None``, or why Neural Cleanse could not decide: the anomalous class's mask never reached
                 ``attack_success_threshold`` (its small norm is no evidence), or there is no image of another class
                 to stamp; ``detected`` is then ``None``, nothing is flagged and a ``UserWarning`` says so.
        """
        return super().detect_poison(**kwargs)

    def _detect(self) -> Tuple[Dict[str, Any], np.ndarray]:
        start = time.perf_counter()
        x, labels = self._data()
        rev = self.reverse_engineer()
        self.masks_, self.patterns_ = rev["masks"], rev["patterns"]
        norms = rev["l1_norms"]
        index = mad_anomaly_index(norms)
        suspected = [int(c) for c in np.argsort(index) if index[c] < -self.anomaly_threshold]
        is_clean = np.ones(len(x), int)
        neurons, threshold = [], None
        inconclusive = None
        if np.isnan(index).all():
            inconclusive = ("at least half of the classes' mask norms are equal, so their median absolute deviation is "
                            "0 and the anomaly index is undefined")
        elif suspected and not rev["converged"][suspected[0]]:
            # the smallest mask never made a working trigger: its small norm is not evidence of a backdoor
            inconclusive = (f"class {suspected[0]} has the anomalous mask, but no mask reached attack success "
                            f"{self.attack_success_threshold} for it within nb_epochs={self.nb_epochs}")
        elif suspected and not np.any(labels != suspected[0]):
            inconclusive = (f"class {suspected[0]} is suspected, but the training set has no image of another class "
                            "to stamp, so the trigger's neurons cannot be found to filter")
        if suspected and not inconclusive:
            target = suspected[0]
            layer = self._adapter.resolve_layer(self.layer)
            others = labels != target
            sample = np.flatnonzero(others)
            sample = sample[np.random.default_rng(self.seed + 1).permutation(len(sample))[:500]]
            stamped_act = self._adapter.get_features(self.stamp(x[sample], target), layer=layer).reshape(
                len(sample), -1)
            feats_all = self._adapter.get_features(x, layer=layer).reshape(len(x), -1)
            members = labels == target
            # the trigger's neurons: raised by the stamp beyond what the target class's own (mostly clean) images
            # activate them (a median, robust to a poisoned minority of the class)
            diff = stamped_act.mean(axis=0) - np.median(feats_all[members], axis=0)
            nb = max(1, int(np.ceil(self.neuron_ratio * diff.size)))
            neurons = [int(i) for i in np.argsort(-diff)[:nb]]
            score = feats_all[:, neurons].mean(axis=1)
            stamped_score = stamped_act[:, neurons].mean(axis=1)
            # between the class's typical score and the stamped images' typical score
            threshold = float((np.median(score[members]) + np.median(stamped_score)) / 2)
            is_clean[members & (score > threshold)] = 0
        report = {
            "detected": None if inconclusive else bool(suspected),
            "inconclusive": inconclusive,
            "target_class": suspected[0] if suspected else None,
            "suspected_classes": suspected,
            "l1_norms": {int(c): float(v) for c, v in enumerate(norms)},
            "anomaly_index": {int(c): float(v) for c, v in enumerate(index)},
            "attack_success": {int(c): float(v) for c, v in enumerate(rev["attack_success"])},
            "converged": {int(c): bool(v) for c, v in enumerate(rev["converged"])},
            "epochs": {int(c): int(v) for c, v in enumerate(rev["epochs"])},
            "masks": rev["masks"],
            "patterns": rev["patterns"],
            "trigger_neurons": neurons,
            "filter_threshold": threshold,
            "nb_flagged": int((is_clean == 0).sum()),
            "seconds_reverse": rev["seconds"],
            "seconds": time.perf_counter() - start,
        }
        if inconclusive:
            msg = f"Neural Cleanse is inconclusive: {inconclusive}; nothing is flagged. Raise nb_epochs and run again."
            logger.warning(msg)
            warnings.warn(msg, UserWarning, stacklevel=3)
        not_conv = [c for c, v in report["converged"].items() if not v]
        if not_conv:
            logger.warning("Neural Cleanse: no mask reached attack success %.2f for classes %s within %d epochs; "
                           "their final masks are used.", self.attack_success_threshold, not_conv, self.nb_epochs)
        logger.info("Neural Cleanse: L1 norms %s, suspected %s (%.1fs).", np.round(norms, 1).tolist(), suspected,
                    report["seconds"])
        return report, is_clean

    def mitigate(self, x_clean: np.ndarray, y_clean: np.ndarray, target: Optional[int] = None,
                 unlearn_ratio: float = 0.2, nb_epochs: int = 2, batch_size: int = 64):
        """
        The paper's unlearning: a copy of the classifier fine-tuned on clean data of which ``unlearn_ratio`` is
        stamped with the reversed trigger of ``target`` (default: the detected target) and keeps its true label.

        :return: A new ART classifier; the given one is not modified.
        """
        if self.report_ is None:
            raise ValueError("Run detect_poison() before mitigate().")
        target = self.report_["target_class"] if target is None else check_int("target", target, 0,
                                                                                 self._adapter.nb_classes - 1)
        if target is None:
            raise ValueError("No infected label was detected; pass target= to unlearn a given class's trigger.")
        check_number("unlearn_ratio", unlearn_ratio, low=0, high=1, low_open=True)
        x, labels = check_xy(x_clean, y_clean, self._adapter.nb_classes, "x_clean", "y_clean")
        x = self._adapter.check_input(x, "x_clean")
        rng = np.random.default_rng(self.seed + 2)
        chosen = rng.random(len(x)) < unlearn_ratio
        x_mix = x.copy()
        x_mix[chosen] = self.stamp(x[chosen], target)
        clone = self._adapter.clone()
        adapter = get_adapter(clone)
        with adapter.seeded(self.seed):
            adapter.fit(x_mix, labels, nb_epochs=nb_epochs, batch_size=batch_size)
        return clone


def expand_all(flags: np.ndarray, ndim: int) -> np.ndarray:
    """``flags`` of shape (K,) reshaped to broadcast against a (K, ...) array of ``ndim`` dimensions."""
    return np.asarray(flags).reshape((-1,) + (1,) * (ndim - 1))
