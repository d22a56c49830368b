"""
Harness rows for the cluster-impurity defence: ``"ci"`` (this package's default: PCA to 10 dimensions before the
mixture fit) and ``"ci-raw"`` (the paper: mixtures on the raw features). Its blur-fragile test trigger is the attack
``"isolated-pixels"`` (:mod:`art_backdoor_ext.registry.attacks`).
"""
from __future__ import annotations

from typing import Any, Dict, Optional


from art_backdoor_ext.evaluation.api import ScenarioContext, register_defence


def _run(ctx: ScenarioContext, **kwargs: Any):
    from art_backdoor_ext.defences.detector.poison.cluster_impurity import ClusterImpurityDefence

    defence = ClusterImpurityDefence(ctx.classifier, ctx.x_train, ctx.y_train, verbose=ctx.verbose, **kwargs)
    report, is_clean = defence.detect_poison()
    comps = report["nb_components"]
    report = dict(report)
    report["notes"] = "components/class " + ",".join(str(comps[c]) for c in sorted(comps))
    return report, is_clean


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
