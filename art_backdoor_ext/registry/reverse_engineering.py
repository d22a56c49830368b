"""
Harness registration of the RE defence (issue 4): ``run_defences(ctx, ["re"])`` runs
:class:`~art_backdoor_ext.defences.detector.poison.ReverseEngineeringDefence` on the scenario's poisoned training set.
"""
from __future__ import annotations

import logging

from art_backdoor_ext.evaluation import ScenarioContext, register_defence

logger = logging.getLogger(__name__)


@register_defence("re")
def _reverse_engineering(ctx: ScenarioContext, **kwargs):
    """
    The RE defence with its defaults (override any parameter by keyword). The report's ``notes`` gives the p-value,
    the inferred source class and the number of pairs that hit the iteration cap.
    """
    from art_backdoor_ext.defences.detector.poison import ReverseEngineeringDefence

    kwargs.setdefault("verbose", ctx.verbose)
    defence = ReverseEngineeringDefence(ctx.classifier, ctx.x_train, ctx.y_train, **kwargs)
    report, is_clean = defence.detect_poison()
    notes = f"p={report['p_value']:.2g}, source={report['source_class']}, est {report['seconds_estimation']:.0f}s"
    if report["not_converged"]:
        notes += f", {len(report['not_converged'])} pairs unconverged"
    report = dict(report, notes=notes)
    return report, is_clean
