"""
Reference rows of the harness, no defence in them: ``"none"`` (the scenario's model as trained: its clean accuracy and
ASR, and what the attack implanted) and ``"clean-reference"`` (a model of the same kind and seed trained on the clean
training set: how often the trigger alone sends source images to the target when there is no backdoor). Together they
are the poisoners benchmark's columns, and the floor and ceiling any repair row sits between.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from art_backdoor_ext.evaluation.api import ScenarioContext, register_defence


def _attack_details(ctx: ScenarioContext) -> Dict[str, Any]:
    """What the scenario's attack did: poisoned images, the trigger's additive pattern norm, a search's history."""
    details: Dict[str, Any] = {"nb_poison": int(np.sum(ctx.is_poison))}
    pattern = getattr(ctx.trigger, "pattern", None)
    details["pattern_l2"] = float(np.linalg.norm(pattern)) if pattern is not None else None
    rates = getattr(ctx.trigger, "fooling_rates", None)  # the adversarial trigger's search (Zhong et al.)
    if rates is not None:
        details["surrogate_fooling_rates"] = [float(r) for r in rates]
    return details


@register_defence("none", kind="transformer")
def _no_defence(ctx: ScenarioContext):
    """No defence: the scenario's own model (its clean accuracy and ASR), with the attack's details."""
    return ctx.classifier, {"detected": None, "target_class": None, "details": _attack_details(ctx)}


@register_defence("clean-reference", kind="transformer")
def _clean_reference(ctx: ScenarioContext):
    """
    A model of the scenario's kind (framework, width, robust or not, epochs, seed) trained on the *clean* training set
    (before poisoning): its ASR is the trigger's success without any backdoor, its accuracy the clean baseline.
    """
    model = ctx.train_model(ctx.x_clean, ctx.y_clean)
    return model, {"detected": None, "target_class": None, "details": _attack_details(ctx)}
