"""
Harness rows for ART's own poison-filtering defences, run on the feature layer of the scenario's model:

* ``"ac"``: Activation Clustering (Chen et al., https://arxiv.org/abs/1811.03728), ART's ``ActivationDefence``;
* ``"ss"``: Spectral Signatures (Tran et al., https://arxiv.org/abs/1811.00636), ART's
  ``SpectralSignatureDefense``.

:func:`activation_clustering` is also a plain function, for rows that combine AC with another method.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.evaluation.api import ScenarioContext, register_defence


def _feature_layer(ctx: ScenarioContext, layer: Optional[str]) -> str:
    return get_adapter(ctx.classifier).resolve_layer(layer)


def _check_art_layer(ctx: ScenarioContext, layer: str) -> str:
    """ART's AC/SS read ``classifier.layer_names[-1]``; say which layer they really used."""
    used = ctx.classifier.layer_names[-1]
    return "" if used == layer else f"ART used layer {used!r}, not {layer!r}"


@register_defence("ac")
def activation_clustering(ctx: ScenarioContext, nb_dims: int = 10, cluster_analysis: str = "smaller",
                          size_threshold: float = 0.35, layer: Optional[str] = None
                          ) -> Tuple[Dict[str, Any], np.ndarray]:
    """
    ART's Activation Clustering (2-means on PCA-10 features per class). ART's ``"relative-size"`` analysis fails under
    numpy >= 2.2, so it runs with ``"smaller"`` and the relative-size rule is applied here: a class is suspected when
    its smaller cluster holds under ``size_threshold`` of it, and only such clusters are flagged.

    ART's k-means draws from numpy's global generator: it is seeded from the scenario for this call and restored
    afterwards, so a row does not depend on what ran before it and the caller's random state is untouched.
    """
    from art.defences.detector.poison import ActivationDefence

    layer = _feature_layer(ctx, layer)
    defence = ActivationDefence(ctx.classifier, ctx.x_train, np.eye(ctx.nb_classes)[ctx.y_train])
    with get_adapter(ctx.classifier).seeded(ctx.scenario.seed):
        _, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=nb_dims, reduce="PCA",
                                            cluster_analysis=cluster_analysis)
    return _relative_size_rule(ctx, is_clean, size_threshold, _check_art_layer(ctx, layer))


@register_defence("ss")
def spectral_signatures(ctx: ScenarioContext, eps_multiplier: float = 1.5, expected_pp_poison: Optional[float] = None,
                        layer: Optional[str] = None) -> Tuple[Dict[str, Any], np.ndarray]:
    """
    ART's Spectral Signatures. ``expected_pp_poison`` defaults to the true poison fraction of the target class (oracle
    knowledge, the most favourable setting for SS; 0.05 on a clean set). SS removes that many from *every* class, so it
    detects nothing by itself: ``detected`` is reported as ``None``.
    """
    from art.defences.detector.poison import SpectralSignatureDefense

    layer = _feature_layer(ctx, layer)
    if expected_pp_poison is None:
        expected_pp_poison = 0.05
        if ctx.target is not None and ctx.is_poison.any():
            expected_pp_poison = max(0.01, float(ctx.is_poison[ctx.y_train == ctx.target].mean()))
    defence = SpectralSignatureDefense(ctx.classifier, ctx.x_train, np.eye(ctx.nb_classes)[ctx.y_train],
                                       expected_pp_poison=expected_pp_poison, batch_size=256,
                                       eps_multiplier=eps_multiplier)
    _, is_clean = defence.detect_poison()
    report = {"detected": None, "target_class": None, "suspected_classes": [],
              "notes": _check_art_layer(ctx, layer), "scores": _spectral_percentiles(ctx)}
    return report, np.asarray(is_clean, int)


def _spectral_percentiles(ctx: ScenarioContext) -> np.ndarray:
    """
    Per-image suspicion for threshold-free metrics: each image's spectral-signature score (ART's
    ``spectral_signature_scores``, the squared projection on the top singular vector of its class's centred features)
    as a percentile within its class, so that classes of different spread are comparable. SS keeps the images below a
    per-class percentile, so these scores order images as SS does within a class.
    """
    from art.defences.detector.poison import SpectralSignatureDefense
    from scipy.stats import rankdata

    layer = len(ctx.classifier.layer_names) - 1  # the layer ART's SS reads
    feats = np.asarray(ctx.classifier.get_activations(ctx.x_train, layer=layer, batch_size=256))
    feats = feats.reshape(len(feats), -1)
    scores = np.zeros(len(feats))
    for c in np.unique(ctx.y_train):
        idx = np.flatnonzero(ctx.y_train == c)
        if len(idx) < 2:
            continue
        raw = np.asarray(SpectralSignatureDefense.spectral_signature_scores(feats[idx])).ravel()
        scores[idx] = rankdata(raw) / len(idx)
    return scores


def _relative_size_rule(ctx: ScenarioContext, is_clean: Sequence[int], size_threshold: float, notes: str):
    """
    ART's relative-size rule on top of the "smaller" analysis: a class is suspected when its smaller cluster holds under
    ``size_threshold`` of the class; only those clusters are marked poisonous (the rest is kept, as ART's own
    "relative-size" analysis would do).
    """
    is_clean = np.asarray(is_clean, int)
    fractions = {int(c): float(np.mean(is_clean[ctx.y_train == c] == 0)) for c in range(ctx.nb_classes)}
    suspected = sorted([c for c, f in fractions.items() if 0 < f < size_threshold], key=lambda c: fractions[c])
    is_clean = np.where(np.isin(ctx.y_train, suspected), is_clean, 1)
    report = {"detected": bool(suspected), "target_class": suspected[0] if suspected else None,
              "suspected_classes": suspected, "flagged_fraction_by_class": fractions, "notes": notes}
    return report, is_clean
