"""
Harness rows for fine-pruning (transformer defences):

* ``"fine-pruning"``: :class:`~art_backdoor_ext.defences.transformer.poisoning.FinePruning` on the poisoned model;
* ``"fine-pruning-paper"``, ``"prune-only"``, ``"fine-tune-only"``: the paper's fine-tuning settings and the two
  ablations (pruning alone, fine-tuning alone), to see what does the work;
* ``"ac+retrain+fine-pruning"``: the thesis's combination (Section 4.3.1): Activation Clustering filters the training
  set, a fresh model is retrained on the images it kept, and that model is fine-pruned.

The defender's clean held-out data (the thesis's "tuning set") is a stratified random ``tuning_fraction`` (10%, as in
the thesis) of the *clean* training set ``ctx.x_clean``: the defender is assumed to own a small trusted subset of its
training data. Those images were seen (unpoisoned) in training; the test set, on which the harness reports accuracy and
ASR, is never used for pruning decisions or fine-tuning. Triggered test images are passed only to record the ASR along
the pruning curve (``record_asr``), which does not influence the result.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from art_backdoor_ext.evaluation.api import ScenarioContext, register_defence
from art_backdoor_ext.registry.art_baselines import activation_clustering


def tuning_set(ctx: ScenarioContext, tuning_fraction: float = 0.1, seed: Optional[int] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
    """A stratified random ``tuning_fraction`` of the clean training set: the defender's trusted held-out data."""
    if not 0 < tuning_fraction <= 1:
        raise ValueError(f"tuning_fraction must lie in (0, 1], got {tuning_fraction}.")
    rng = np.random.default_rng(ctx.scenario.seed if seed is None else seed)
    idx = []
    for c in np.unique(ctx.y_clean):
        members = np.flatnonzero(ctx.y_clean == c)
        k = max(1, int(round(tuning_fraction * len(members))))
        idx.append(rng.choice(members, size=k, replace=False))
    idx = np.sort(np.concatenate(idx))
    return ctx.x_clean[idx], ctx.y_clean[idx]


def _backdoor_eval(ctx: ScenarioContext):
    if ctx.trigger is None:
        return None, None
    src = np.isin(ctx.y_test, ctx.sources)
    return ctx.trigger(ctx.x_test[src]), ctx.target


def _fine_prune(ctx: ScenarioContext, classifier, tuning_fraction: float, record_asr: bool, **kwargs):
    from art_backdoor_ext.defences.transformer.poisoning import FinePruning

    x_tune, y_tune = tuning_set(ctx, tuning_fraction)
    x_bd, y_bd = _backdoor_eval(ctx) if record_asr else (None, None)
    kwargs.setdefault("verbose", ctx.verbose)
    defence = FinePruning(classifier, **kwargs)
    model = defence(x_tune, y_tune, x_backdoor=x_bd, y_backdoor=y_bd)
    report: Dict[str, Any] = dict(defence.report_)
    report["nb_tuning_images"] = int(len(x_tune))
    rate = report["learning_rate"]
    report["notes"] = (f"{report['nb_pruned']}/{report['nb_channels']} channels of {report['layer']} pruned "
                       f"({report['method']}), {report['nb_epochs']} fine-tuning epochs"
                       + (f" at {rate:.2g}{' (chosen on held-out data)' if report['learning_rate_search'] else ''}"
                          if rate is not None else "") + f"; {report['clean_data_use']}")
    return model, report


@register_defence("fine-pruning", kind="transformer")
def _fine_pruning(ctx: ScenarioContext, tuning_fraction: float = 0.1, record_asr: bool = True, **kwargs):
    """
    Fine-pruning of the poisoned model with a clean tuning set drawn from the clean training data. ``kwargs`` go to
    :class:`FinePruning` (``layer``, ``max_acc_drop``, ``step``, ``nb_epochs``, ``learning_rate``, ``method`` ...).
    """
    return _fine_prune(ctx, ctx.classifier, tuning_fraction, record_asr, **kwargs)


@register_defence("fine-pruning-paper", kind="transformer")
def _fine_pruning_paper(ctx: ScenarioContext, tuning_fraction: float = 0.1, record_asr: bool = True, **kwargs):
    """Fine-pruning with the paper's fine-tuning (``FinePruning.PAPER``: the optimizer's rate, 5 epochs, constant)."""
    from art_backdoor_ext.defences.transformer.poisoning import FinePruning

    return _fine_prune(ctx, ctx.classifier, tuning_fraction, record_asr, **{**FinePruning.PAPER, **kwargs})


@register_defence("prune-only", kind="transformer")
def _prune_only(ctx: ScenarioContext, tuning_fraction: float = 0.1, record_asr: bool = True, **kwargs):
    """Ablation: the pruning step of fine-pruning alone (no fine-tuning)."""
    return _fine_prune(ctx, ctx.classifier, tuning_fraction, record_asr, **{**kwargs, "nb_epochs": 0})


@register_defence("fine-tune-only", kind="transformer")
def _fine_tune_only(ctx: ScenarioContext, tuning_fraction: float = 0.1, record_asr: bool = True, **kwargs):
    """Ablation: the default fine-tuning (re-initialised head, scaled rate, cosine decay) without pruning."""
    return _fine_prune(ctx, ctx.classifier, tuning_fraction, record_asr, **{**kwargs, "prune": False})


@register_defence("ac+retrain+fine-pruning", kind="transformer")
def _ac_retrain_fine_pruning(ctx: ScenarioContext, tuning_fraction: float = 0.1, record_asr: bool = True,
                             ac_kwargs: Optional[Dict[str, Any]] = None, **kwargs):
    """
    The thesis's combination: Activation Clustering (the harness's ``"ac"`` row) filters the poisoned training set, a
    fresh model of the scenario's kind is retrained on the kept images, and the retrained model is fine-pruned.
    """
    ac_report, is_clean = activation_clustering(ctx, **(ac_kwargs or {}))
    keep = np.asarray(is_clean).astype(bool)
    retrained = ctx.train_model(ctx.x_train[keep], ctx.y_train[keep])
    model, report = _fine_prune(ctx, retrained, tuning_fraction, record_asr, **kwargs)
    removed = int((~keep).sum())
    removed_poison = int((~keep & ctx.is_poison).sum())
    report.update({
        "detected": ac_report.get("detected"),
        "target_class": ac_report.get("target_class"),
        "suspected_classes": ac_report.get("suspected_classes", []),
        "ac_removed": removed,
        "ac_removed_poison": removed_poison,
        "notes": f"AC removed {removed} images ({removed_poison} poisoned); " + report["notes"],
    })
    return model, report
