"""
Harness rows of the RE defence (:class:`~art_backdoor_ext.defences.detector.poison.ReverseEngineeringDefence`):

* ``"re"``: the defence with its defaults (per-source normalised detection rule);
* ``"re-paper"``: the paper's detection rule (``normalize_sources=False``: one Gamma null for all reciprocal
  statistics).

Both rows estimate the patterns through the scenario's shared cache, keyed by everything that determines them
(classifier, data, estimation parameters), so the two rules are compared on identical patterns whichever row runs
first, and neither row changes the other's defence object.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Tuple

import numpy as np

from art_backdoor_ext.evaluation.api import ScenarioContext, register_defence

logger = logging.getLogger(__name__)


def _run(ctx: ScenarioContext, **kwargs: Any) -> Tuple[Dict[str, Any], np.ndarray]:
    from art_backdoor_ext.defences.detector.poison import ReverseEngineeringDefence

    kwargs.setdefault("verbose", ctx.verbose)
    defence = ReverseEngineeringDefence(ctx.classifier, ctx.x_train, ctx.y_train, **kwargs)
    estimate = ctx.shared(("re-estimate",) + defence.estimation_key(), defence.estimate)
    report, is_clean = defence.detect_from(estimate)
    notes = f"p={report['p_value']:.2g}, source={report['source_class']}, est {report['seconds_estimation']:.0f}s"
    if report["not_converged"]:
        notes += f", {len(report['not_converged'])} pairs unconverged"
    if report.get("cleansing_scale") is not None:
        notes += f", alpha {report['cleansing_scale']:.2g}"
    if report.get("cleansing_reliable") is False:
        notes += ", cleansing unreliable"
    if report.get("dismissed_classes"):
        notes += f", dismissed {report['dismissed_classes']}"
    return dict(report, notes=notes, details=_details(ctx, report)), np.asarray(is_clean, int)


DETAIL_KEYS = ("cleansing", "cleansing_scale", "cleansing_reliable", "cleansing_notes", "relative_margin",
               "dismissed_classes", "norm_ratios", "seconds_estimation", "p_value", "source_class", "class_p_values",
               "null_params", "reciprocal_statistics", "pattern", "normalize_sources", "detected", "target_class")
"""Report entries kept in the row's ``details``: what the RE benchmark tabulates and plots."""


def _details(ctx: ScenarioContext, report: Dict[str, Any]) -> Dict[str, Any]:
    """The report's :data:`DETAIL_KEYS`, plus the scenario's true additive pattern (``trigger_pattern``, for plots
    beside the recovered one; the defence never sees it)."""
    details = {k: report[k] for k in DETAIL_KEYS if k in report}
    details["trigger_pattern"] = getattr(ctx.trigger, "pattern", None)
    return details


@register_defence("re")
def _reverse_engineering(ctx: ScenarioContext, **kwargs: Any):
    """
    The RE defence with its defaults (override any parameter by keyword). The report's ``notes`` gives the p-value,
    the inferred source class and the number of pairs that hit the iteration cap.
    """
    return _run(ctx, **kwargs)


@register_defence("re-paper")
def _reverse_engineering_paper_rule(ctx: ScenarioContext, **kwargs: Any):
    """
    The RE defence with the paper's detection rule and cleansing (``normalize_sources=False``: one Gamma null for all
    reciprocal statistics; ``max_norm_ratio=None``: the test alone; ``cleansing="paper"``: Eq. 12; no sanity check);
    other parameters as ``"re"``, and the patterns shared with an ``"re"`` row of the same estimation parameters.
    """
    if "normalize_sources" in kwargs:
        raise ValueError("The 're-paper' row fixes normalize_sources=False; use the 're' row to choose it.")
    kwargs.setdefault("max_norm_ratio", None)  # the test alone
    kwargs.setdefault("cleansing", "paper")  # Eq. (12)
    kwargs.setdefault("min_relative_margin", None)  # no sanity check
    return _run(ctx, normalize_sources=False, **kwargs)
