"""
Harness row of Neural Cleanse for both frameworks (:class:`~art_backdoor_ext.defences.detector.poison.
NeuralCleanseDefence`): ``"nc"``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from art_backdoor_ext.evaluation.api import ScenarioContext, register_defence


@register_defence("nc")
def _neural_cleanse(ctx: ScenarioContext, **kwargs: Any):
    """Neural Cleanse with its defaults (any parameter by keyword); notes give the flagged label's anomaly index."""
    from art_backdoor_ext.defences.detector.poison import NeuralCleanseDefence

    kwargs.setdefault("verbose", ctx.verbose)
    kwargs.setdefault("seed", ctx.scenario.seed)
    report, is_clean = NeuralCleanseDefence(ctx.classifier, ctx.x_train, ctx.y_train, **kwargs).detect_poison()
    index = report["anomaly_index"]
    low = min(index, key=index.get)
    notes = f"lowest anomaly index {index[low]:.2f} (class {low})"
    return dict(report, notes=notes), np.asarray(is_clean, int)
