"""
Fine-pruning (Liu, Dolan-Gavitt and Garg, RAID 2018, https://arxiv.org/abs/1805.12185) as an ART transformer.

On clean held-out data the channels of a convolution layer (by default the last one) are ranked by their mean
activation (after the ReLU); the least active are pruned first, a step at a time, until the clean accuracy on the
held-out data falls by more than ``max_acc_drop`` (4% in the paper; the last model within the bound is kept); the pruned
model is then fine-tuned on the same clean data. Backdoor neurons that clean inputs leave dormant are removed, and
fine-tuning weakens what remains of the backdoor.

Pruning is done by the framework adapter (:mod:`art_backdoor_ext.estimators`): a persistent mask for PyTorch
(``torch.nn.utils.prune``) and Keras 3 (a serialisable channel-mask constraint), and physical removal with keras-surgeon
for tf.keras models (``TF_USE_LEGACY_KERAS=1``).

**Deviations from the paper: the fine-tuning.** The paper fine-tunes the pruned model as it is, with the training
optimizer's own rate (Adam 1e-3 here), for a few epochs. On the reference CNNs that leaves the backdoor in place (ASR
0.83-0.98 on BadNets over 5 seeds, ``benchmarks/results/fine_pruning_ablation.md``), and pruning alone barely moves the
ASR: the backdoor does not live in channels that clean data leaves dormant, so fine-tuning has to do the work. The
default differs in two ways, both chosen without the trigger:

* ``reinit_head=True``: the output layer is re-initialised before fine-tuning (its own initializer, drawn with
  ``seed``). The trained head maps the trigger's features to the target; fine-tuning a fresh head on clean data alone
  forces the features to be re-fitted to the clean labels, which is what removes the trigger's shortcut (the "FT-init"
  baseline that Min et al., NeurIPS 2023, https://arxiv.org/abs/2310.01875, analyse as a feature-shift: a re-initialised
  head moves the features away from the backdoor's). On the wide PyTorch BadNets CNN (5 seeds, 400 clean images,
  Adam 5e-3 with cosine decay) it takes the ASR after fine-tuning from 0.02-0.23 (the trained head) to 0.01-0.04.
* ``learning_rate="scaled"`` with ``anneal=True``: the whole model is fine-tuned at ``lr_scale`` (5) times the
  optimizer's configured rate, the model's own training rate, decayed per epoch along a half cosine to 1% of it over 20
  epochs (Loshchilov and Hutter, https://arxiv.org/abs/1608.03983): the large initial rate moves the weights away from
  the backdoor, the decay recovers clean accuracy. ``learning_rate="auto"`` chooses the rate on held-out clean data
  instead: a stratified ``validation_split`` of the clean images is held out, the pruned model is fine-tuned on the
  rest at each of ``lr_factors`` times the optimizer's rate (largest first), and the first whose held-out accuracy
  stays within ``max_acc_drop`` of the original model's on the same images is kept (the smallest when none is, with a
  ``UserWarning``). It is not the default: with a few hundred clean images the held-out accuracy is too noisy to
  resolve ``max_acc_drop`` (100 images: +-0.04), and when the clean images were training data the original's accuracy
  on them is inflated by memorisation, so the search falls back to the smallest rate, the one that leaves the
  backdoor.

The paper's procedure is one call away: ``FinePruning.paper(classifier)`` (:attr:`PAPER`: the trained head, the
optimizer's rate, 5 epochs, no decay, all clean data for pruning and fine-tuning).

How the default, the paper's settings, pruning alone and fine-tuning alone fare on the reference CNNs is measured by
``benchmarks/fine_pruning.py`` (``benchmarks/results/fine_pruning.md`` and the README), not restated here.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from art.defences.transformer.transformer import Transformer

from art_backdoor_ext.defences.base import set_params_atomically
from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.utils import (check_bool, check_choice, check_images, check_int, check_layer_name, check_number,
                                    check_seed, check_xy, progress, wilson_half_width)

logger = logging.getLogger(__name__)

METHODS = ("auto", "mask", "surgeon")


class FinePruning(Transformer):
    """
    Fine-pruning: prune the convolution channels that clean data leaves dormant, then fine-tune on clean data.

    Calling the transformer with clean held-out data returns a **new** ART classifier of the same wrapper type around a
    pruned, fine-tuned copy of the model; the given classifier and its model are not modified. The pruning curve and a
    summary are kept in :attr:`report_` (and :attr:`curve_`).
    """

    params = ["layer", "max_acc_drop", "step", "nb_epochs", "learning_rate", "lr_scale", "lr_factors",
              "validation_split", "anneal", "reinit_head", "prune", "batch_size", "method", "full_curve", "min_clean",
              "seed", "verbose"]

    PAPER = {"learning_rate": None, "nb_epochs": 5, "anneal": False, "reinit_head": False}
    """The paper's fine-tuning: the optimizer's own rate, 5 epochs, constant rate, the trained output layer kept, all
    clean data (:meth:`paper`)."""

    def __init__(self, classifier, layer: Optional[str] = None, max_acc_drop: float = 0.04,
                 step: Union[int, float] = 1, nb_epochs: int = 20, learning_rate: Union[str, float, None] = "scaled",
                 lr_scale: float = 5.0, lr_factors: Sequence[float] = (10, 5, 2, 1), validation_split: float = 0.25,
                 anneal: bool = True, reinit_head: bool = True, prune: bool = True, batch_size: int = 64,
                 method: str = "auto", full_curve: bool = False, min_clean: int = 100,
                 seed: Optional[int] = 0,
                 verbose: bool = False) -> None:
        """
        :param classifier: A trained ART ``PyTorchClassifier``, ``KerasClassifier`` or ``TensorFlowV2Classifier``.
        :param layer: Name of the convolution layer to prune; ``None`` = the last convolution layer (the paper's
                      choice; the thesis also tried the second-to-last).
        :param max_acc_drop: Stop pruning before the held-out clean accuracy falls by more than this (0.04 = 4 points;
                             the thesis also tried 0.02 and 0.06).
        :param step: Channels pruned per step: an int, or a float in (0, 1) for a fraction of the layer's channels.
        :param nb_epochs: Fine-tuning epochs on the clean data (0 = prune only; the paper: 5; more epochs let the
                          decayed rate recover clean accuracy after a large initial rate).
        :param learning_rate: Fine-tuning learning rate: ``"scaled"`` (default) is ``lr_scale`` times the optimizer's
                              configured rate (the model's own training rate); ``"auto"`` chooses it on held-out clean
                              data (the largest of ``lr_factors`` times the optimizer's rate whose held-out accuracy
                              stays within ``max_acc_drop`` of the original model's); a float uses that rate; ``None``
                              keeps the optimizer's configured rate (the paper). Only ``"auto"`` holds data out.
        :param lr_scale: ``"scaled"``: the fine-tuning rate as a multiple of the optimizer's configured rate.
        :param lr_factors: ``"auto"``: candidate rates as multiples of the optimizer's configured rate, tried largest
                           first; the first whose held-out accuracy stays within ``max_acc_drop`` of the original
                           model's on the same images is kept (each costs one fine-tuning run). When none is, the
                           smallest is used and a ``UserWarning`` says so.
        :param validation_split: ``"auto"``: share of the clean images (stratified by class, drawn with ``seed``) held
                                 out to measure each candidate's accuracy cost; the rest are fine-tuned on.
        :param anneal: Decay the rate per epoch along a half cosine to 1% of its initial value (``False``: constant
                       rate, as in the paper).
        :param reinit_head: Re-initialise the output (dense) layer before fine-tuning, with its own initializer drawn
                            with ``seed`` (``False``: fine-tune the trained layer, as in the paper). See the module
                            docstring for why this is the default.
        :param prune: ``False`` skips the pruning (fine-tuning only: an ablation, to see what the pruning adds).
        :param batch_size: Fine-tuning batch size.
        :param method: ``"mask"`` (persistent channel mask), ``"surgeon"`` (physical removal with keras-surgeon,
                       tf.keras models only) or ``"auto"`` (surgeon where available, else mask).
        :param full_curve: Keep sweeping after the stopping point (on a scratch copy) to record the whole pruning
                           curve; the model returned is the same.
        :param seed: Seed for the fine-tuning data order (``None`` = leave numpy's global RNG alone).
        :param min_clean: Fewest clean held-out images accepted (a ``ValueError`` below it). The accuracy drop is
                          measured on them: with n images at accuracy p the 95% Wilson interval of the accuracy has a
                          half-width of about ``1.96 sqrt(p (1 - p) / n)``, and a ``UserWarning`` is raised when that
                          half-width is larger than ``max_acc_drop`` (the stopping point is then noise).
        :param verbose: Show a progress bar over the pruning sweep and fine-tuning progress.
        """
        super().__init__(classifier=classifier)
        self.layer = layer
        self.max_acc_drop = max_acc_drop
        self.step = step
        self.nb_epochs = nb_epochs
        self.learning_rate = learning_rate
        self.lr_scale = lr_scale
        self.lr_factors = lr_factors
        self.validation_split = validation_split
        self.anneal = anneal
        self.reinit_head = reinit_head
        self.prune = prune
        self.batch_size = batch_size
        self.method = method
        self.full_curve = full_curve
        self.seed = seed
        self.verbose = verbose
        self.min_clean = min_clean
        self.activations_: Optional[np.ndarray] = None
        self.order_: Optional[np.ndarray] = None
        self.report_: Dict[str, Any] = {}
        self._check_params()

    # ------------------------------------------------------------------------------------------------------ checks
    def set_params(self, **kwargs) -> None:
        """
        Set parameters atomically: unknown keys raise a ``ValueError`` naming the valid ones (ART's ``Transformer``
        drops them); when the new values fail the checks every parameter keeps its previous value.
        """
        set_params_atomically(self, kwargs, self.params, self._check_params)

    def _check_params(self) -> None:
        check_number("max_acc_drop", self.max_acc_drop, low=0, high=1, high_open=True, hint="0.04 = 4 points")
        if isinstance(self.step, (float, np.floating)) and not float(self.step).is_integer():
            check_number("step", self.step, low=0, high=1, low_open=True, high_open=True,
                         hint="an int >= 1 or a fraction of the layer's channels")
        else:
            if not isinstance(self.step, (int, np.integer, float, np.floating)) or isinstance(self.step, bool):
                raise ValueError(f"step must be an int >= 1 or a fraction in (0, 1), got {self.step!r}.")
            check_number("step", self.step, low=1, hint="an int >= 1 or a fraction in (0, 1)")
        check_int("nb_epochs", self.nb_epochs, low=0, hint="0 = prune only")
        named = isinstance(self.learning_rate, str) and self.learning_rate in ("auto", "scaled")
        if self.learning_rate is not None and not named:
            if isinstance(self.learning_rate, str):
                raise ValueError(f"learning_rate must be 'scaled', 'auto', a positive float or None, got "
                                 f"{self.learning_rate!r}.")
            check_number("learning_rate", self.learning_rate, low=0, low_open=True,
                         hint="'scaled' (lr_scale times the optimizer's rate), 'auto' to choose it on held-out clean "
                              "data, or None to keep the optimizer's rate")
        check_number("lr_scale", self.lr_scale, low=0, low_open=True, hint="a multiple of the optimizer's rate")
        if isinstance(self.lr_factors, (str, bytes)) or not hasattr(self.lr_factors, "__len__") or \
                len(self.lr_factors) == 0:
            raise ValueError(f"lr_factors must be a non-empty sequence of positive numbers, got {self.lr_factors!r}.")
        for factor in self.lr_factors:
            check_number("lr_factors", factor, low=0, low_open=True, hint="multiples of the optimizer's rate")
        check_number("validation_split", self.validation_split, low=0, high=1, low_open=True, high_open=True,
                     hint="share of the clean images held out by learning_rate='auto'")
        check_bool("anneal", self.anneal)
        check_bool("reinit_head", self.reinit_head)
        check_bool("prune", self.prune)
        check_int("batch_size", self.batch_size, low=1)
        check_choice("method", self.method, METHODS)
        check_layer_name("layer", self.layer)
        check_bool("full_curve", self.full_curve)
        check_seed("seed", self.seed)
        check_int("min_clean", self.min_clean, low=1)
        check_bool("verbose", self.verbose)

    @classmethod
    def paper(cls, classifier, **kwargs) -> "FinePruning":
        """
        Fine-pruning with the paper's settings (:attr:`PAPER`: the optimizer's own rate, 5 epochs at a constant rate,
        every clean image used to prune and to fine-tune); other keyword arguments as in the constructor.
        """
        return cls(classifier, **{**cls.PAPER, **kwargs})

    def _resolve_method(self, adapter) -> str:
        if self.method == "surgeon" and not adapter.supports_channel_removal:
            raise ValueError("method='surgeon' needs a tf.keras model (TF_USE_LEGACY_KERAS=1) and keras-surgeon; "
                             f"{type(adapter.classifier).__name__} around {type(adapter.model).__name__} cannot be "
                             "pruned physically: use method='mask'.")
        if self.method == "auto":
            return "surgeon" if adapter.supports_channel_removal else "mask"
        return self.method

    # ------------------------------------------------------------------------------------------------------ ART API
    def fit(self, x: np.ndarray, y: Optional[np.ndarray] = None, **kwargs) -> None:
        """
        Rank the channels of the chosen layer by their mean (post-ReLU) activation on clean data ``x``, least active
        first (stored in :attr:`activations_` and :attr:`order_`). ``y`` is not used.
        """
        adapter = get_adapter(self.classifier)
        x = check_images(x)
        if len(x) == 0:
            raise ValueError("fit needs clean images to rank the channels; got an empty x.")
        x = adapter.check_input(x, "x")
        layer = adapter.resolve_conv_layer(self.layer)
        self.activations_ = adapter.channel_activations(x, layer)
        self.order_ = np.argsort(self.activations_, kind="stable")
        self._is_fitted = True

    def __call__(self, x: np.ndarray, y: Optional[np.ndarray] = None, transformed_classifier=None,
                 x_backdoor: Optional[np.ndarray] = None, y_backdoor: Union[None, int, np.ndarray] = None):
        """
        Fine-prune the classifier with clean held-out data.

        :param x: Clean held-out images (the defender's tuning set): used to rank channels, to measure the accuracy drop
                  while pruning, and to fine-tune.
        :param y: Their labels (integer or one-hot); required.
        :param transformed_classifier: Optional classifier with the same architecture (typically a copy of the
                                       classifier) to prune and fine-tune in place and return (ART's transformer
                                       convention); by default a copy of the classifier is made. Ignored by the
                                       keras-surgeon path, which always builds a new model.
        :param x_backdoor: Optional triggered test images, to record the attack success rate along the pruning curve
                           (evaluation only: the defence never trains on them).
        :param y_backdoor: The attacker's target label(s) for ``x_backdoor`` (an int or one label per image).
        :return: A new ART classifier around the pruned, fine-tuned model.
        """
        start = time.perf_counter()
        if y is None:
            raise ValueError("FinePruning needs the labels y of the clean held-out data (to measure accuracy and to "
                             "fine-tune).")
        adapter = get_adapter(self.classifier)
        x, labels = check_xy(x, y, adapter.nb_classes)
        if len(x) == 0:
            raise ValueError("FinePruning needs clean held-out images; got an empty x.")
        bd_x, bd_y = self._check_backdoor(x_backdoor, y_backdoor, adapter)
        method = self._resolve_method(adapter)
        layer = adapter.resolve_conv_layer(self.layer)
        nb = adapter.nb_channels(layer)
        x = adapter.check_input(x, "x")
        if len(x) < self.min_clean:
            raise ValueError(f"FinePruning got {len(x)} clean images but needs at least min_clean={self.min_clean}: the "
                             f"accuracy drop that stops pruning (max_acc_drop={self.max_acc_drop}) cannot be measured "
                             "on fewer. Give more clean held-out data (or lower min_clean knowingly).")

        self.fit(x)
        order = self.order_
        acc0 = self._accuracy(adapter, x, labels)
        self._warn_if_unresolved(acc0, len(x), "measures accuracy on", "", "the pruning stops at noise")
        asr0 = self._asr(adapter, bd_x, bd_y)
        counts = self._step_counts(nb)

        # the sweep runs on a scratch copy (masks are cheap to extend); the model returned is rebuilt afterwards
        scratch = get_adapter(adapter.clone())
        curve_n, curve_acc, curve_asr = [0], [acc0], [asr0]
        n_keep, stopped, done = 0, False, 0
        bar = progress(counts, self.verbose, total=len(counts), desc=f"fine-pruning {layer}")
        for count in bar if self.prune else ():
            scratch.prune_channels(layer, order[done:count])
            done = count
            acc = self._accuracy(scratch, x, labels)
            curve_n.append(count)
            curve_acc.append(acc)
            curve_asr.append(self._asr(scratch, bd_x, bd_y))
            if not stopped and acc0 - acc > self.max_acc_drop:
                stopped = True
                if not self.full_curve:
                    break
            if not stopped:
                n_keep = count
            if self.verbose:
                bar.set_postfix(pruned=count, acc=f"{acc:.3f}")
        if hasattr(bar, "close"):
            bar.close()
        pruned = [int(c) for c in order[:n_keep]]
        if n_keep == 0 and self.prune:
            why = (f"step={self.step} is not smaller than the layer's {nb} channels (pruning never removes them all)"
                   if not counts else f"the first step ({counts[0]} of {nb} channels) already costs more than "
                   f"max_acc_drop={self.max_acc_drop} of clean accuracy")
            warnings.warn(f"FinePruning pruned no channel of {layer}: {why}; lower `step` or raise max_acc_drop. Only "
                          "fine-tuning acts.", UserWarning, stacklevel=2)
        logger.info("Fine-pruning %s: %d/%d channels pruned (held-out accuracy %.3f -> %.3f).", layer, n_keep, nb,
                    acc0, curve_acc[curve_n.index(n_keep)])

        if method == "surgeon":
            new = adapter.remove_channels(layer, pruned)
        else:
            new = transformed_classifier if transformed_classifier is not None else adapter.clone()
            if transformed_classifier is not None:
                self._check_same_architecture(adapter, get_adapter(new))
            get_adapter(new).prune_channels(layer, pruned)
        new_adapter = get_adapter(new)
        acc_pruned = self._accuracy(new_adapter, x, labels)
        asr_pruned = self._asr(new_adapter, bd_x, bd_y)

        search: List[Dict[str, Any]] = []
        val_before = val_after = val_reference = float("nan")
        nb_tune, nb_val = (len(x) if self.nb_epochs > 0 else 0), 0
        learning_rate = self.learning_rate
        if self.nb_epochs > 0:
            base_rate = new_adapter.get_learning_rate()
            if learning_rate == "auto":  # choose the rate on held-out clean data
                tune, val = self._split(labels)
                nb_tune, nb_val = len(tune), len(val)
                if nb_val == 0 or nb_tune == 0:
                    raise ValueError(f"learning_rate='auto' holds out validation_split={self.validation_split} of "
                                     f"each class, which leaves {nb_tune} images to fine-tune and {nb_val} to "
                                     "validate; give more clean images per class or set learning_rate explicitly.")
                val_before = self._accuracy(adapter, x[val], labels[val])
                self._warn_if_unresolved(val_before, nb_val, "holds out", "to choose the fine-tuning rate",
                                         "the rate chosen may cost more accuracy than that")
                val_reference = val_before  # the original model's accuracy on the held-out images
                learning_rate, tuned, val_after, search = self._choose_rate(
                    new_adapter, x[tune], labels[tune], x[val], labels[val], base_rate, val_reference)
                if transformed_classifier is not None and method != "surgeon":
                    # the caller's own classifier is the one returned: fine-tune it the same way (same seed and data)
                    self._fine_tune(new_adapter, x[tune], labels[tune], learning_rate)
                else:
                    new, new_adapter = tuned.classifier, tuned
            else:
                if learning_rate is None:  # the paper: the optimizer's own rate
                    learning_rate = base_rate
                elif learning_rate == "scaled":
                    learning_rate = float(self.lr_scale) * base_rate
                else:
                    learning_rate = float(learning_rate)
                self._fine_tune(new_adapter, x, labels, learning_rate)
        acc_after = self._accuracy(new_adapter, x, labels)
        asr_after = self._asr(new_adapter, bd_x, bd_y)

        fractions = [n / nb for n in curve_n]
        self.report_ = {
            "detected": None,
            "target_class": None,
            "suspected_classes": [],
            "layer": layer,
            "method": method,
            "nb_channels": nb,
            "nb_pruned": n_keep,
            "fraction_pruned": n_keep / nb,
            "pruned_channels": pruned,
            "mean_activations": [float(a) for a in self.activations_],
            "max_acc_drop": float(self.max_acc_drop),
            "holdout_accuracy_before": acc0,
            "holdout_accuracy_pruned": acc_pruned,
            "holdout_accuracy_after": acc_after,
            "asr_before": asr0,
            "asr_pruned": asr_pruned,
            "asr_after": asr_after,
            "pruning_curve": {"nb_pruned": curve_n, "fraction": fractions, "accuracy": curve_acc, "asr": curve_asr},
            "nb_epochs": int(self.nb_epochs),
            "learning_rate": learning_rate if self.nb_epochs > 0 else None,
            "learning_rate_search": search,
            "anneal": bool(self.anneal),
            "reinit_head": bool(self.reinit_head and self.nb_epochs > 0),
            "nb_clean": int(len(x)),
            "nb_fine_tune": int(nb_tune),
            "nb_validation": int(nb_val),
            "validation_accuracy_before": val_before,
            "validation_accuracy_after": val_after,
            "validation_accuracy_reference": val_reference,
            "clean_data_use": (f"{len(x)} clean images: all {len(x)} rank the channels and measure the pruning's "
                               f"accuracy drop; " + (
                                   f"{nb_tune} fine-tune the model and {nb_val} (held out) choose the rate"
                                   if nb_val else f"{nb_tune} fine-tune the model" if nb_tune else "no fine-tuning")),
            "seconds": time.perf_counter() - start,
        }
        self.curve_ = self.report_["pruning_curve"]
        return new

    # ------------------------------------------------------------------------------------------------------ helpers
    def _warn_if_unresolved(self, accuracy: float, nb: int, verb: str, purpose: str, consequence: str) -> None:
        """A ``UserWarning`` when the 95% Wilson half-width of an accuracy measured on ``nb`` images exceeds
        ``max_acc_drop`` (the drop that decides cannot be measured on so few)."""
        half_width = wilson_half_width(accuracy, nb)
        if half_width > self.max_acc_drop:
            warnings.warn(f"FinePruning {verb} {nb} clean images{' ' + purpose if purpose else ''} (accuracy "
                          f"{accuracy:.3f} +- {half_width:.3f}, 95% Wilson interval), which cannot resolve "
                          f"max_acc_drop={self.max_acc_drop}: {consequence}. Give more clean data.", UserWarning,
                          stacklevel=3)

    def _choose_rate(self, adapter, x_tune: np.ndarray, y_tune: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                     base_rate: float, reference: float):
        """
        ``learning_rate="auto"``: fine-tune copies of the pruned model at ``lr_factors`` times ``base_rate``, largest
        first, and keep the first (the largest) whose held-out accuracy stays within ``max_acc_drop`` of
        ``reference``, the original model's accuracy on the same held-out images; when none does, the smallest is
        used. When the held-out images were part of the training data, the original's accuracy on them is inflated by
        memorisation and the test is stricter than on unseen data (a smaller rate is chosen): it errs on the side of
        clean accuracy.

        :return: ``(rate, tuned adapter, its held-out accuracy, the search record)``.
        """
        factors = sorted({float(f) for f in self.lr_factors}, reverse=True)
        search: List[Dict[str, Any]] = []
        for factor in factors:
            candidate = get_adapter(adapter.clone())
            self._fine_tune(candidate, x_tune, y_tune, factor * base_rate)
            acc_val = self._accuracy(candidate, x_val, y_val)
            accepted = reference - acc_val <= self.max_acc_drop
            search.append({"learning_rate": factor * base_rate, "factor": factor, "validation_accuracy": acc_val,
                           "accepted": bool(accepted)})
            logger.info("Fine-tuning at %.2g: held-out accuracy %.3f (reference %.3f)%s.", factor * base_rate,
                        acc_val, reference, ", accepted" if accepted else "")
            if accepted:
                break
        if not search[-1]["accepted"]:
            rates = ", ".join(f"{f * base_rate:.2g}" for f in factors)
            warnings.warn(f"FinePruning: no fine-tuning rate in ({rates}) kept the held-out "
                          f"accuracy within max_acc_drop={self.max_acc_drop} of the original model's "
                          f"({reference:.3f}); the smallest, {factors[-1] * base_rate:.2g}, was used: the clean "
                          "accuracy may fall by more than max_acc_drop (if these clean images were training data, the "
                          "original's accuracy on them is inflated by memorisation and this check is conservative).",
                          UserWarning,
                          stacklevel=3)
        return factor * base_rate, candidate, acc_val, search

    def _fine_tune(self, adapter, x: np.ndarray, labels: np.ndarray, learning_rate: float) -> None:
        """Fine-tune in place; ART's ``fit`` draws its data order from global generators, seeded here for this call
        only (the caller's state is restored)."""
        if self.reinit_head:
            adapter.reset_output_layer(self.seed)
        with adapter.seeded(self.seed):
            if self.anneal:
                adapter.fit_annealed(x, labels, learning_rate, self.nb_epochs, batch_size=self.batch_size,
                                     verbose=self.verbose)
            else:
                adapter.set_learning_rate(learning_rate)
                adapter.fit(x, labels, nb_epochs=self.nb_epochs, batch_size=self.batch_size, verbose=self.verbose)

    def _split(self, labels: np.ndarray):
        """Stratified (tune, validation) index split of the clean images, drawn with ``seed``; every class with at
        least two images keeps one on each side."""
        rng = np.random.default_rng(self.seed)
        tune, val = [], []
        for c in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == c))
            k = int(round(self.validation_split * len(members)))
            k = min(max(k, 1), len(members) - 1) if len(members) > 1 else 0
            val.append(members[:k])
            tune.append(members[k:])
        return np.sort(np.concatenate(tune)), np.sort(np.concatenate(val))

    def _step_counts(self, nb: int) -> List[int]:
        """Cumulative numbers of pruned channels at each step (never all channels)."""
        if isinstance(self.step, (float, np.floating)) and not float(self.step).is_integer():
            size = max(1, int(round(self.step * nb)))
        else:
            size = int(self.step)
        return list(range(size, nb, size))

    @staticmethod
    def _check_backdoor(x_backdoor, y_backdoor, adapter):
        if x_backdoor is None:
            if y_backdoor is not None:
                raise ValueError("y_backdoor was given without x_backdoor; pass the triggered images as x_backdoor.")
            return None, None
        nb_classes = adapter.nb_classes
        bd_x = adapter.check_input(check_images(x_backdoor, name="x_backdoor"), "x_backdoor")
        if y_backdoor is None:
            raise ValueError("Pass y_backdoor (the attacker's target label, an int or one per image) with x_backdoor.")
        if np.ndim(y_backdoor) == 0:
            target = check_int("y_backdoor", y_backdoor, low=0, high=nb_classes - 1,
                               hint="the attacker's target class")
            bd_y = np.full(len(bd_x), target, np.int64)
        else:
            _, bd_y = check_xy(bd_x, y_backdoor, nb_classes)
        if bd_y.size and (bd_y.min() < 0 or bd_y.max() >= nb_classes):
            raise ValueError(f"y_backdoor must hold class indices in [0, {nb_classes}).")
        return bd_x, bd_y

    @staticmethod
    def _accuracy(adapter, x: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(adapter.predict_labels(x) == labels))

    @staticmethod
    def _asr(adapter, bd_x: Optional[np.ndarray], bd_y: Optional[np.ndarray]) -> float:
        if bd_x is None or len(bd_x) == 0:
            return float("nan")
        return float(np.mean(adapter.predict_labels(bd_x) == bd_y))

    @staticmethod
    def _check_same_architecture(source, target) -> None:
        if [w.shape for w in source.get_weights()] != [w.shape for w in target.get_weights()]:
            raise ValueError("transformed_classifier must have the same architecture as the classifier.")
