"""
One scenario's missing tasks, as a worker runs them (in this process for the local backend, in a Ray worker for the
ray backend): the scenario prepared through the cache, each defence run, its result stored.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from art_backdoor_ext.evaluation.api import Scenario
from art_backdoor_ext.evaluation.runner import prepare_scenario, run_defences
from art_backdoor_ext.grid.cache import GridCache
from art_backdoor_ext.grid.stats import threshold_free_scores

__all__ = ["run_scenario_tasks", "task_payload"]


def _device_of(classifier) -> str:
    device = getattr(classifier, "_device", None)  # ART's PyTorchClassifier
    return str(device) if device is not None else "tensorflow"


def task_payload(ctx, row) -> Dict[str, Any]:
    """The JSON-safe result of one defence on one prepared scenario (what the cache stores and the tables read)."""
    scores = None
    raw = row.report.get("scores") if isinstance(row.report, dict) else None
    if raw is not None and len(raw) == len(ctx.is_poison):
        scores = threshold_free_scores(raw, ctx.is_poison)
    return {"seed": ctx.scenario.seed, "poisoned": ctx.scenario.poisoned, "target": ctx.target,
            "clean_accuracy": ctx.clean_accuracy, "asr": ctx.asr, "train_seconds": ctx.train_seconds,
            "nb_train": int(len(ctx.is_poison)), "nb_poison": int(np.sum(ctx.is_poison)), "row": row.as_dict(),
            "scores": scores, "device": _device_of(ctx.classifier)}


def run_scenario_tasks(scenario: Scenario, defences: Sequence[Tuple[str, Dict[str, Any], bool]], cache: GridCache,
                       verbose: bool = False,
                       on_result: Optional[Callable[[int, Dict[str, Any]], None]] = None) -> List[Dict[str, Any]]:
    """
    Prepare one scenario through the cache (poisoned set and model reused when stored) and run the given defences on
    it, storing each result as soon as it is computed (so a killed run loses at most the defence under way).

    Every defence runs with numpy's and the framework's global generators seeded from the scenario and restored
    afterwards, so its result does not depend on what ran before it in the process (training, or a cache hit instead,
    or another defence).

    :param defences: ``(name, kwargs, retrain)`` triples.
    :param on_result: Called with ``(index, payload)`` after each defence.
    :return: One payload per defence.
    """
    from art_backdoor_ext.estimators import get_adapter

    ctx = prepare_scenario(scenario, verbose=verbose, store=cache)
    adapter = get_adapter(ctx.classifier)
    payloads = []
    for i, (name, kwargs, retrain) in enumerate(defences):
        with adapter.seeded(scenario.seed):
            (row,) = run_defences(ctx, [name], {name: kwargs} if kwargs else None, retrain=retrain)
        cache.counts["defence"] += 1
        payload = task_payload(ctx, row)
        cache.put_result(scenario, name, kwargs, retrain, payload)
        payloads.append(payload)
        if on_result is not None:
            on_result(i, payload)
    return payloads
