"""Harness registration of AEGIS (:class:`art_backdoor_ext.defences.detector.poison.AEGISDefence`)."""
from __future__ import annotations

import logging

import numpy as np

from art_backdoor_ext.evaluation.api import ScenarioContext, register_defence

logger = logging.getLogger(__name__)


@register_defence("aegis")
def _aegis(ctx: ScenarioContext, **kwargs):
    """
    AEGIS on the scenario's model and poisoned training set (model-level detection; ``is_clean`` marks the training
    images of a suspected class outside its main training cluster). Meant for robust scenarios
    (``Scenario(robust=True)``); on a standard model it warns and its cluster counts are not meaningful.
    """
    from art_backdoor_ext.defences.detector.poison.aegis import AEGISDefence

    if not ctx.scenario.robust:
        logger.warning("AEGIS runs on %s, which was not trained robustly; AEGIS presumes a robust model.",
                       ctx.scenario.name)
    kwargs.setdefault("verbose", ctx.verbose)
    defence = AEGISDefence(ctx.classifier, ctx.x_train, ctx.y_train, **kwargs)
    report, is_clean = defence.detect_poison()
    counts = report["nb_clusters"]
    report = dict(report)
    report["notes"] = "clusters/class " + ",".join(str(counts[c]) for c in sorted(counts))
    return report, np.asarray(is_clean, int)
