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
    ctx.cache["re"] = defence
    report, is_clean = defence.detect_poison()
    ctx.cache["re_report"] = report
    return _summary(report, is_clean)


@register_defence("re-paper")
def _reverse_engineering_paper_rule(ctx: ScenarioContext, **kwargs):
    """
    The RE defence with the paper's detection rule and cleansing (``normalize_sources=False``: one Gamma null for all
    reciprocal statistics; ``max_norm_ratio=None``: the test alone; ``cleansing="paper"``: Eq. 12; no sanity check).
    Reuses the patterns of an ``"re"`` row run before it on the same scenario (same estimation parameters), so the two
    detection rules are compared on identical patterns.
    """
    from art_backdoor_ext.defences.detector.poison import ReverseEngineeringDefence

    kwargs["normalize_sources"] = False
    kwargs.setdefault("max_norm_ratio", None)  # the test alone
    kwargs.setdefault("cleansing", "paper")  # Eq. (12)
    kwargs.setdefault("min_relative_margin", None)  # no sanity check
    kwargs.setdefault("verbose", ctx.verbose)
    defence = ctx.cache.get("re")
    if defence is None:
        defence = ReverseEngineeringDefence(ctx.classifier, ctx.x_train, ctx.y_train)
        ctx.cache["re"] = defence
    return _summary(*defence.detect_poison(**kwargs))


def _summary(report, is_clean):
    notes = f"p={report['p_value']:.2g}, source={report['source_class']}, est {report['seconds_estimation']:.0f}s"
    if report["not_converged"]:
        notes += f", {len(report['not_converged'])} pairs unconverged"
    report = dict(report, notes=notes)
    return report, is_clean
