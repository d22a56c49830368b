"""Harness registration of AEGIS (:class:`art_backdoor_ext.defences.detector.poison.AEGISDefence`)."""
from __future__ import annotations

import logging
from typing import Any, Dict, List

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
    report["details"] = _details(defence, report, ctx)
    return report, np.asarray(is_clean, int)


# ------------------------------------------------------------------------------------------------ diagnostics
RULES = ("masking", "translated", "all", "isolated", "pattern")
"""Cluster-counting rules compared from one AEGIS run (``details["rules"]``); ``masking`` is the defence's own."""
ISOLATED_MAX_TRANSLATED = 0.05
"""``isolated`` rule: a training sub-cluster counts when under this fraction of its t-SNE neighbours are translated."""
PATTERN_MIN_COSINE = 0.5
"""``pattern`` rule: a training sub-cluster counts when its distinctive pattern has a larger cosine with the
translations' than this."""


def _details(defence, report: Dict[str, Any], ctx: ScenarioContext) -> Dict[str, Any]:
    """
    What the AEGIS benchmark tabulates, from this one run: the cluster counts (the default rule, Algorithm 1's literal
    rule, the translated clusters), every training sub-cluster with its alternative-rule scores and its number of
    poisoned images, and the outcome (detection, target, TPR/FPR of the marking) of every rule of :data:`RULES`.
    The ground truth (``ctx.is_poison``) enters only these diagnostics, never the defence's verdict.
    """
    pc = report["per_class"]
    extra = _extra_rule_scores(defence)
    subpops = {}
    for c in pc:
        idx = defence.train_indices_[c]
        labels = defence.cluster_labels_[c][: len(idx)]
        subpops[c] = [{**p, **e, "nb_poison": int(ctx.is_poison[idx[labels == p["cluster"]]].sum())}
                      for p, e in zip(pc[c]["subpopulations"], extra[c])]
    return {
        "rules": _rule_outcomes(defence, report, ctx, extra), "subpopulations": subpops,
        "nb_clusters_all": {c: pc[c]["nb_clusters_all"] for c in pc},
        "nb_translated_clusters": {c: pc[c]["nb_translated_clusters"] for c in pc},
        "translation_success": report["translation_success"], "seconds_translation": report["seconds_translation"],
        "nb_train_total": int(len(ctx.x_train)), "nb_poison": int(np.sum(ctx.is_poison)),
    }


def _extra_rule_scores(defence) -> Dict[int, List[Dict[str, float]]]:
    """
    Per class, per training sub-cluster (the masking rule's candidates), the scores of two alternative rules:
    ``knn_translated`` (fraction of translated points among the 10 t-SNE neighbours of its points) and
    ``pattern_cosine`` (cosine between the positive part of its mean image minus the main cluster's and the positive
    part of the translations' mean image minus the main cluster's).
    """
    out = {}
    x = defence._x  # pylint: disable=protected-access
    for c in defence.train_indices_:
        sub = defence.report_["per_class"][c]["subpopulations"]
        idx, labels = defence.train_indices_[c], defence.cluster_labels_[c]
        emb, trans = defence.embeddings_[c], defence.is_translated_[c]
        train_labels = labels[: len(idx)]
        values, counts = np.unique(train_labels, return_counts=True)
        main_mean = x[idx[train_labels == values[np.argmax(counts)]]].mean(axis=0).ravel()
        carried = np.clip(defence.translated_[c].mean(axis=0).ravel() - main_mean, 0, None)
        scores = []
        for p in sub:
            members = train_labels == p["cluster"]
            pts = emb[: len(idx)][members]
            d2 = ((pts[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
            nn = np.argsort(d2, axis=1)[:, 1:11]
            diff = np.clip(x[idx[members]].mean(axis=0).ravel() - main_mean, 0, None)
            cos = float(diff @ carried / (np.linalg.norm(diff) * np.linalg.norm(carried) + 1e-12))
            scores.append({"knn_translated": float(trans[nn].mean()), "pattern_cosine": cos})
        out[c] = scores
    return out


def _rule_outcomes(defence, report: Dict[str, Any], ctx: ScenarioContext,
                   extra: Dict[int, List[Dict[str, float]]]) -> Dict[str, Dict[str, Any]]:
    """Detection, target and the marking's TPR/FPR under every rule of :data:`RULES`, all from one AEGIS run."""
    pc = report["per_class"]
    k = len(pc)
    out = {}
    for rule in RULES:
        counts, flagged_clusters = {}, {}
        for c in range(k):
            n_trans = pc[c]["nb_translated_clusters"]
            sub = pc[c]["subpopulations"]
            if rule in ("all", "translated"):
                counts[c] = pc[c]["nb_clusters_all"] if rule == "all" else 1 + n_trans
                flagged_clusters[c] = None
                continue
            if rule == "masking":
                keep = [p["backdoor"] for p in sub]
            elif rule == "isolated":
                keep = [e["knn_translated"] < ISOLATED_MAX_TRANSLATED for e in extra[c]]
            else:
                keep = [e["pattern_cosine"] > PATTERN_MIN_COSINE for e in extra[c]]
            flagged_clusters[c] = [p["cluster"] for p, f in zip(sub, keep) if f]
            # the translations count as one population, whether in clusters of their own (their splits flagged a
            # clean model, never a target class) or merged into a training cluster (as the defence counts them)
            counts[c] = 2 + len(flagged_clusters[c])
        suspected = sorted([c for c in range(k) if counts[c] > defence.cluster_threshold],
                           key=lambda c: (-counts[c], c))
        is_clean = np.ones(len(ctx.x_train), int)
        for c in suspected:
            idx, labels = defence.train_indices_[c], defence.cluster_labels_[c][: len(defence.train_indices_[c])]
            if flagged_clusters[c] is None:  # outside the main training cluster
                values, nb = np.unique(labels, return_counts=True)
                is_clean[idx[labels != values[np.argmax(nb)]]] = 0
            else:
                is_clean[idx[np.isin(labels, flagged_clusters[c])]] = 0
        target = suspected[0] if suspected else None
        flagged = is_clean == 0
        out[rule] = {
            "detected": bool(suspected), "target_class": target, "suspected_classes": suspected,
            "target_right": (target == ctx.target) if ctx.target is not None else None,
            "false_positive_classes": [c for c in suspected if c != ctx.target],
            "tpr": float(flagged[ctx.is_poison].mean()) if ctx.is_poison.any() else float("nan"),
            "fpr": float(flagged[~ctx.is_poison].mean()), "nb_flagged": int(flagged.sum()),
        }
    return out
