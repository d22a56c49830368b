"""
Harness rows for the cluster-impurity defence: ``"ci"`` (this package's default: PCA to 10 dimensions before the
mixture fit) and ``"ci-raw"`` (the paper: mixtures on the raw features). Its blur-fragile test trigger is the attack
``"isolated-pixels"`` (:mod:`art_backdoor_ext.registry.attacks`).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from art_backdoor_ext.evaluation.api import ScenarioContext, register_defence


def _run(ctx: ScenarioContext, **kwargs: Any):
    from art_backdoor_ext.defences.detector.poison.cluster_impurity import ClusterImpurityDefence

    defence = ClusterImpurityDefence(ctx.classifier, ctx.x_train, ctx.y_train, verbose=ctx.verbose, **kwargs)
    report, is_clean = defence.detect_poison()
    comps = report["nb_components"]
    report = dict(report)
    report["notes"] = "components/class " + ",".join(str(comps[c]) for c in sorted(comps))
    report["details"] = _details(ctx, report)
    return report, is_clean


def _details(ctx: ScenarioContext, report: Dict[str, Any]) -> Dict[str, Any]:
    """
    What the cluster-impurity benchmark renders: components and largest impurity per class, every component's
    impurity and size (for :func:`~art_backdoor_ext.plotting.plot_impurity`), and the blur flip rate (the fraction of
    images whose prediction the blur changes: CI's premise) of the poisoned images and of each class's clean images.
    """
    changed = np.asarray(report["prediction_changed"], bool)
    clean = ~np.asarray(ctx.is_poison, bool)
    flip_clean = [float(changed[clean & (ctx.y_train == c)].mean()) if np.any(clean & (ctx.y_train == c))
                  else float("nan") for c in range(ctx.nb_classes)]
    keep = ("nb_images", "nb_components", "impurities", "component_sizes", "flagged_components")
    return {
        "nb_components": report["nb_components"], "max_impurity": report["max_impurity"],
        "per_class": {c: {k: pc[k] for k in keep if k in pc} for c, pc in report["per_class"].items()},
        "threshold": report.get("threshold"), "reduce": report.get("reduce"), "nb_dims": report.get("nb_dims"),
        "layer": report.get("layer"),
        "flip_poison": float(changed[~clean].mean()) if (~clean).any() else float("nan"),
        "flip_clean_by_class": flip_clean,
    }


@register_defence("ci")
def _cluster_impurity(ctx: ScenarioContext, layer: Optional[str] = None, reduce: Optional[str] = "pca",
                      nb_dims: int = 10, **kwargs: Any):
    """
    Cluster impurity with this package's default PCA reduction (``reduce="pca"``, ``nb_dims=10``); other
    :class:`ClusterImpurityDefence` parameters pass through.
    """
    return _run(ctx, layer=layer, reduce=reduce, nb_dims=nb_dims, **kwargs)


@register_defence("ci-raw")
def _cluster_impurity_raw(ctx: ScenarioContext, layer: Optional[str] = None, **kwargs: Dict[str, Any]):
    """Cluster impurity as in the paper: mixtures on the raw (unreduced) features."""
    return _run(ctx, layer=layer, reduce=None, **kwargs)
