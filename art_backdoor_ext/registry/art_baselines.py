"""
Harness rows for ART's own poison-filtering defences, run on the feature layer of the scenario's model:

* Activation Clustering (Chen et al., https://arxiv.org/abs/1811.03728), ART's ``ActivationDefence``, one row per
  cluster analysis: ``"ac-smaller"`` (ART's default), ``"ac-distance"``, ``"ac-silhouette"``, ``"ac-relative-size"``
  and ``"ac-exre"`` (exclusionary reclassification, ``ex_re_threshold``); ``"ac"`` is the relative-size row under the
  name the tables have always used;
* Spectral Signatures (Tran et al., https://arxiv.org/abs/1811.00636), ART's ``SpectralSignatureDefense``:
  ``"ss"`` (what a careful ART user runs: ART's default ``expected_pp_poison=0.33``, no knowledge of the poison),
  ``"ss-art"`` (the same row under its explicit name) and ``"ss-oracle"`` (told the true poison fraction of the target
  class, ORACLE knowledge no defender has: the most favourable setting, shown beside it);
* ``"provenance"``: ART's ``ProvenanceDefense`` (Baracaldo et al., https://ieeexplore.ieee.org/document/8473440) on a
  data-source label per training image that the row derives from the scenario's seed (the training set split at
  random into sources, every poisoned image in one of them) and a trusted clean subset (the first test images).

:func:`activation_clustering` is also a plain function, for rows that combine AC with another method.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.evaluation.api import ScenarioContext, register_defence
from art_backdoor_ext.utils import check_choice, check_int, check_number


def _feature_layer(ctx: ScenarioContext, layer: Optional[str]) -> str:
    return get_adapter(ctx.classifier).resolve_layer(layer)


def _check_art_layer(ctx: ScenarioContext, layer: str) -> str:
    """ART's AC/SS read ``classifier.layer_names[-1]``; say which layer they really used."""
    used = ctx.classifier.layer_names[-1]
    return "" if used == layer else f"ART used layer {used!r}, not {layer!r}"


AC_ANALYSES = ("smaller", "distance", "silhouette-scores", "relative-size")
"""ART's cluster analyses (``ActivationDefence.valid_analysis``), each with a row."""

RELATIVE_SIZE_NOTE = ("relative-size rule applied here on ART's 'smaller' clusters: ART's own 'relative-size' analysis "
                      "fails under numpy >= 2.2")


def _check_ac_kwargs(nb_dims, size_threshold=None, ex_re_threshold=None) -> None:
    check_int("nb_dims", nb_dims, low=1, hint="ART's default is 10")
    if size_threshold is not None:
        check_number("size_threshold", size_threshold, low=0, high=1, low_open=True, high_open=True,
                     hint="ART's default is 0.35")
    if ex_re_threshold is not None:
        check_number("ex_re_threshold", ex_re_threshold, low=0, low_open=True)


def _art_ac(ctx: ScenarioContext, cluster_analysis: str, nb_dims: int, ex_re_threshold: Optional[float] = None):
    """
    Run ART's ``ActivationDefence.detect_poison`` (2-means on PCA features per class) and return the defence (for its
    clusters) with ART's report and ``is_clean``. ART's k-means draws from numpy's global generator: it is seeded from
    the scenario for this call and restored afterwards, so a row does not depend on what ran before it.
    """
    from art.defences.detector.poison import ActivationDefence

    defence = ActivationDefence(ctx.classifier, ctx.x_train, np.eye(ctx.nb_classes)[ctx.y_train],
                                ex_re_threshold=ex_re_threshold)
    with get_adapter(ctx.classifier).seeded(ctx.scenario.seed):
        report, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=nb_dims, reduce="PCA",
                                                 cluster_analysis=cluster_analysis)
    return defence, report, np.asarray(is_clean, int)


@register_defence("ac")
def activation_clustering(ctx: ScenarioContext, nb_dims: int = 10, cluster_analysis: str = "smaller",
                          size_threshold: float = 0.35, layer: Optional[str] = None
                          ) -> Tuple[Dict[str, Any], np.ndarray]:
    """
    ART's Activation Clustering (2-means on PCA-10 features per class) with ART's relative-size rule. ART's
    ``"relative-size"`` analysis fails under numpy >= 2.2 (it tests ``cluster_id in np.where(...)``, an array truth
    value), so it runs with ``"smaller"`` and the relative-size rule is applied here: a class is suspected when its
    smaller cluster holds under ``size_threshold`` of it, and only such clusters are flagged. (ART rounds the fraction
    to two decimals first; this rule does not, which matters only for a cluster within 0.005 of the threshold.)

    Registered as ``"ac"`` (the name the tables have always used) and ``"ac-relative-size"``.
    """
    _check_ac_kwargs(nb_dims, size_threshold)
    check_choice("cluster_analysis", cluster_analysis, AC_ANALYSES)
    layer = _feature_layer(ctx, layer)
    _, _, is_clean = _art_ac(ctx, cluster_analysis, nb_dims)
    notes = "; ".join(n for n in (_check_art_layer(ctx, layer), RELATIVE_SIZE_NOTE) if n)
    return _relative_size_rule(ctx, is_clean, size_threshold, notes)


register_defence("ac-relative-size")(activation_clustering)


@register_defence("ac-smaller")
def ac_smaller(ctx: ScenarioContext, nb_dims: int = 10, layer: Optional[str] = None
               ) -> Tuple[Dict[str, Any], np.ndarray]:
    """
    ART's default analysis, ``"smaller"``, as ART runs it: the smaller of the two clusters of *every* class is marked
    poisonous, so every class is suspected (``detected`` is always true) and about a third of the training set is
    flagged. ``target_class`` is the class whose smaller cluster is relatively smallest.
    """
    _check_ac_kwargs(nb_dims)
    layer = _feature_layer(ctx, layer)
    _, report, is_clean = _art_ac(ctx, "smaller", nb_dims)
    return _ac_report(ctx, is_clean, report, _check_art_layer(ctx, layer))


@register_defence("ac-distance")
def ac_distance(ctx: ScenarioContext, nb_dims: int = 10, layer: Optional[str] = None
                ) -> Tuple[Dict[str, Any], np.ndarray]:
    """
    ART's ``"distance"`` analysis: a cluster is poisonous when its median (in the PCA space of its class) lies closer to
    another class's median than to its own class's median while the other cluster does not.
    """
    _check_ac_kwargs(nb_dims)
    layer = _feature_layer(ctx, layer)
    _, report, is_clean = _art_ac(ctx, "distance", nb_dims)
    return _ac_report(ctx, is_clean, report, _check_art_layer(ctx, layer))


@register_defence("ac-silhouette")
def ac_silhouette(ctx: ScenarioContext, nb_dims: int = 10, layer: Optional[str] = None
                  ) -> Tuple[Dict[str, Any], np.ndarray]:
    """
    ART's ``"silhouette-scores"`` analysis: a class is suspected when its smaller cluster holds under 0.35 of it (sizes
    rounded to two decimals) *and* its 2-means silhouette score exceeds 0.1 (ART's fixed thresholds); the smaller
    cluster of a suspected class is flagged.

    ART's analyser marks the flagged cluster as clean as well as poisonous and leaves the other cluster's marks
    uninitialised (``np.empty``) for a suspected class, so its ``is_clean`` for that class is undefined; this row takes
    ART's verdict per class (``report["class_<i>"]["suspicious"]``) and ART's clusters, and flags the clusters under
    the size threshold of the suspected classes, as the analysis intends.
    """
    _check_ac_kwargs(nb_dims)
    layer = _feature_layer(ctx, layer)
    defence, report, _ = _art_ac(ctx, "silhouette-scores", nb_dims)
    is_clean = np.ones(len(ctx.y_train), int)
    size_threshold = round(0.35, 2)  # ART's default for analyze_by_silhouette_score, not settable from detect_poison
    for c, clusters in enumerate(defence.clusters_by_class):
        if not report.get(f"class_{c}", {}).get("suspicious"):
            continue
        clusters = np.asarray(clusters, int)
        fractions = np.round(np.bincount(clusters, minlength=2) / len(clusters), 2)
        idx = np.flatnonzero(ctx.y_train == c)
        is_clean[idx[np.isin(clusters, np.flatnonzero(fractions < size_threshold))]] = 0
    notes = "; ".join(n for n in (_check_art_layer(ctx, layer),
                                  "is_clean rebuilt from ART's per-class verdict (ART leaves it undefined)") if n)
    return _ac_report(ctx, is_clean, report, notes)


@register_defence("ac-exre")
def ac_exclusionary_reclassification(ctx: ScenarioContext, ex_re_threshold: float = 1.0,
                                     cluster_analysis: str = "smaller", nb_dims: int = 10,
                                     layer: Optional[str] = None) -> Tuple[Dict[str, Any], np.ndarray]:
    """
    ART's Activation Clustering with exclusionary reclassification (Chen et al., Section 4.2; ART's
    ``ActivationDefence(..., ex_re_threshold=...)``): after the cluster analysis (ART's default ``"smaller"``), ART
    trains a fresh copy of the model (``clone_for_refitting``, then ``fit`` with ART's defaults) on the images not
    flagged and classifies every flagged cluster with it. A flagged cluster stays poisonous only when
    ``count(its label) / count(the most frequent other class) <= ex_re_threshold`` among the fresh model's predictions
    (with 1.0: another class is predicted at least as often as the label); otherwise it is cleared. The report names,
    per class still suspected, the class the fresh model predicts instead (``suspected_sources``).

    This trains a model per call (ART's ``fit`` defaults: 10 epochs for PyTorch, 20 for Keras, batch 128), from the
    framework's global generator seeded from the scenario.

    :param ex_re_threshold: ART's threshold (ART has no default; 1.0 is the value of published usage examples).
    :param cluster_analysis: The analysis whose clusters are reclassified: ``"smaller"`` or ``"distance"``
                             (``"relative-size"`` fails under numpy >= 2.2, and ART's ``"silhouette-scores"`` hands
                             exclusionary reclassification no flagged cluster and an undefined ``is_clean``; see
                             :func:`ac_silhouette`).
    """
    _check_ac_kwargs(nb_dims, ex_re_threshold=ex_re_threshold)
    check_choice("cluster_analysis", cluster_analysis, ("smaller", "distance"),
                 hint="the analyses ART's exclusionary reclassification works with here")
    if not hasattr(ctx.classifier, "clone_for_refitting"):
        raise ValueError(f"ac-exre needs a classifier with clone_for_refitting (ART's exclusionary reclassification); "
                         f"{type(ctx.classifier).__name__} has none.")
    layer = _feature_layer(ctx, layer)
    defence, report, is_clean = _art_ac(ctx, cluster_analysis, nb_dims, ex_re_threshold=float(ex_re_threshold))
    out, is_clean = _ac_report(ctx, is_clean, report, _check_art_layer(ctx, layer))
    sources = {}
    for c in out["suspected_classes"]:
        for cluster in report.get(f"Class_{c}", {}).values():
            if isinstance(cluster, dict) and "Suspected_Source_class" in cluster:
                sources[c] = int(cluster["Suspected_Source_class"])
    out["suspected_sources"] = sources
    return out, is_clean


def _ac_report(ctx: ScenarioContext, is_clean: np.ndarray, art_report: Dict[str, Any], notes: str):
    """
    The harness report of an AC row from ART's marking: the suspected classes are those with a flagged image, most
    suspicious (smallest flagged fraction) first; ART's own report is kept under ``"art_report"``.
    """
    is_clean = np.asarray(is_clean, int)
    fractions = {int(c): float(np.mean(is_clean[ctx.y_train == c] == 0)) for c in range(ctx.nb_classes)}
    suspected = sorted([c for c, f in fractions.items() if f > 0], key=lambda c: fractions[c])
    report = {"detected": bool(suspected), "target_class": suspected[0] if suspected else None,
              "suspected_classes": suspected, "flagged_fraction_by_class": fractions, "notes": notes,
              "art_report": art_report}
    return report, is_clean


def _ss_row(ctx: ScenarioContext, eps_multiplier: float, expected_pp_poison: float, layer: Optional[str],
            note: str = "") -> Tuple[Dict[str, Any], np.ndarray]:
    from art.defences.detector.poison import SpectralSignatureDefense

    check_number("eps_multiplier", eps_multiplier, low=0, low_open=True, hint="ART's default is 1.5")
    check_number("expected_pp_poison", expected_pp_poison, low=0, high=1, low_open=True,
                 hint="ART's default is 0.33")
    layer = _feature_layer(ctx, layer)
    defence = SpectralSignatureDefense(ctx.classifier, ctx.x_train, np.eye(ctx.nb_classes)[ctx.y_train],
                                       expected_pp_poison=expected_pp_poison, batch_size=256,
                                       eps_multiplier=eps_multiplier)
    _, is_clean = defence.detect_poison()
    notes = "; ".join(n for n in (_check_art_layer(ctx, layer), note) if n)
    report = {"detected": None, "target_class": None, "suspected_classes": [], "notes": notes,
              "expected_pp_poison": float(expected_pp_poison), "scores": _spectral_percentiles(ctx)}
    return report, np.asarray(is_clean, int)


def _oracle_pp_poison(ctx: ScenarioContext) -> float:
    """The true poison fraction of the target class (at least 0.01); 0.05 on a clean set."""
    if ctx.target is not None and ctx.is_poison.any():
        return max(0.01, float(ctx.is_poison[ctx.y_train == ctx.target].mean()))
    return 0.05


@register_defence("ss")
def spectral_signatures(ctx: ScenarioContext, eps_multiplier: float = 1.5, expected_pp_poison: float = 0.33,
                        layer: Optional[str] = None) -> Tuple[Dict[str, Any], np.ndarray]:
    """
    ART's Spectral Signatures as an ART user runs it: ART's defaults (``expected_pp_poison=0.33``,
    ``eps_multiplier=1.5``), so it removes the ``1.5 * 0.33`` most suspicious fraction (about half) of *every* class
    whatever the poison, and detects nothing by itself (``detected`` is ``None``). Until version 0.1.0's tables this
    row was told the true poison fraction (oracle knowledge); that setting is now the ``"ss-oracle"`` row.
    """
    return _ss_row(ctx, eps_multiplier, expected_pp_poison, layer)


@register_defence("ss-oracle")
def spectral_signatures_oracle(ctx: ScenarioContext, eps_multiplier: float = 1.5, layer: Optional[str] = None
                               ) -> Tuple[Dict[str, Any], np.ndarray]:
    """
    ART's Spectral Signatures told the true poison fraction of the target class as ``expected_pp_poison`` (ORACLE
    knowledge no defender has; 0.05 on a clean set): the most favourable setting for SS.
    """
    pp = _oracle_pp_poison(ctx)
    return _ss_row(ctx, eps_multiplier, pp, layer, note=f"oracle expected_pp_poison={pp:.3f}")


@register_defence("ss-art")
def spectral_signatures_art(ctx: ScenarioContext, eps_multiplier: float = 1.5, expected_pp_poison: float = 0.33,
                            layer: Optional[str] = None) -> Tuple[Dict[str, Any], np.ndarray]:
    """
    ART's Spectral Signatures with ART's defaults: the ``"ss"`` row under an explicit name.
    """
    return spectral_signatures(ctx, eps_multiplier, expected_pp_poison, layer)


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


# ------------------------------------------------------------------------------------------------------ provenance
def source_labels(ctx: ScenarioContext, nb_sources: int) -> Tuple[np.ndarray, int]:
    """
    A data-source label per training image, derived from the scenario's seed: the images are split at random into
    ``nb_sources`` sources of about equal size, and every poisoned image is put into one source (drawn at random), as
    when the poison comes from one contributor. Returns ``(source of each image, the poisoned source)``; on a clean
    scenario the poisoned source is still drawn (it then holds no poison).
    """
    rng = np.random.default_rng([int(ctx.scenario.seed), 19])
    sources = rng.permutation(np.arange(len(ctx.y_train)) % nb_sources)
    poisoned_source = int(rng.integers(nb_sources))
    sources[np.asarray(ctx.is_poison, bool)] = poisoned_source
    return sources, poisoned_source


def _provenance_defence_class():
    from art.defences.detector.poison import ProvenanceDefense

    class RowwiseProvenanceDefense(ProvenanceDefense):
        """
        ART's ``ProvenanceDefense`` with one repair: ART's ``filter_input`` keeps an image when *any of its pixel
        values* does not occur anywhere in the source's images (``np.isin`` on values), which on images removes every
        image (all their values occur in any large source). Here an image is removed when it equals an image of the
        source, what ART means by "the data not part of the segment".
        """

        @staticmethod
        def filter_input(data: np.ndarray, labels: np.ndarray, segment: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
            def rows(a):
                a = np.ascontiguousarray(a).reshape(len(a), -1)
                return a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).ravel()

            keep = ~np.isin(rows(data), rows(segment)) if len(segment) else np.ones(len(data), bool)
            return data[keep], labels[keep]

    return RowwiseProvenanceDefense


@register_defence("provenance")
def provenance(ctx: ScenarioContext, nb_sources: int = 5, nb_trusted: int = 100, eps: float = 0.2
               ) -> Tuple[Dict[str, Any], np.ndarray]:
    """
    ART's ``ProvenanceDefense`` in its partially trusted mode (Baracaldo et al.): for each data source in turn, two
    copies of the scenario's model are trained further (ART's ``fit`` defaults: 10 epochs for PyTorch, 20 for Keras),
    one on all remaining data and one without the source, and the source is flagged (and left out from then on) when
    leaving it out raises the accuracy on trusted clean data by more than ``eps``. Every image of a flagged source is
    marked poisonous.

    The scenario has no provenance, so the row derives it (:func:`source_labels`): the training set split at random
    into ``nb_sources`` sources from the scenario's seed, every poisoned image in one of them. The trusted clean data
    are the first ``nb_trusted`` test images (the row does not change the model, so the test accuracy is unaffected).

    Two deviations from ART's code, both in the notes (and ART is given a deep copy of the classifier without ART's
    cache of layer outputs: ART's own ``deepcopy`` of a ``PyTorchClassifier`` fails once ART's ``get_activations`` has
    run on it): ART's ``filter_input`` compares pixel values rather than images
    and would leave no data at all (see ``RowwiseProvenanceDefense``), and ART's ``perf_func="accuracy"`` cannot score
    a classifier's probability outputs, so accuracy is passed as a function of the predicted class. The report holds
    every source's accuracy shift (``accuracy_gain_by_source``), not only the flagged ones.

    :param nb_sources: Number of data sources (>= 2).
    :param nb_trusted: Number of trusted clean images (the first test images).
    :param eps: ART's threshold on the accuracy gain (ART's default 0.2).
    """
    nb_sources = check_int("nb_sources", nb_sources, low=2, high=len(ctx.y_train))
    nb_trusted = check_int("nb_trusted", nb_trusted, low=1, high=len(ctx.y_test), hint="the first test images")
    eps = check_number("eps", eps, low=0, hint="ART's default is 0.2")
    sources, poisoned_source = source_labels(ctx, nb_sources)
    accuracies = []

    def accuracy(y_true: np.ndarray, probabilities: np.ndarray) -> float:
        acc = float(np.mean(np.argmax(probabilities, axis=1) == y_true))
        accuracies.append(acc)
        return acc

    # ART deep-copies the classifier it is given (optimiser state included), twice per source. After ART's
    # get_activations (AC, SS) a PyTorchClassifier holds hooked layer outputs (``_features``) that deepcopy refuses: ART
    # gets a deep copy made here with that cache left empty. A trained Keras model holds traced functions that cannot
    # be copied at all: ART then gets a copy with the same weights and a fresh optimiser from the adapter, which ART
    # can copy. ctx.classifier itself is not changed.
    features = getattr(ctx.classifier, "_features", None)
    try:
        classifier = copy.deepcopy(ctx.classifier, memo={} if features is None else {id(features): {}})
    except TypeError:
        classifier = get_adapter(ctx.classifier).clone()
    defence = _provenance_defence_class()(classifier, ctx.x_train, np.eye(ctx.nb_classes)[ctx.y_train],
                                          np.eye(nb_sources)[sources], x_val=ctx.x_test[:nb_trusted],
                                          y_val=np.asarray(ctx.y_test[:nb_trusted]), eps=eps, perf_func=accuracy)
    with get_adapter(ctx.classifier).seeded(ctx.scenario.seed):
        art_report, is_clean = defence.detect_poison()
    # performance_diff scores the model without the source, then the model with it, once per source in order
    gains = {s: accuracies[2 * s] - accuracies[2 * s + 1] for s in range(nb_sources)}
    suspected = sorted(int(s) for s in art_report)
    report = {"detected": bool(suspected), "target_class": None, "suspected_classes": [],
              "suspected_sources": suspected, "poisoned_source": poisoned_source,
              "poisoned_source_flagged": poisoned_source in suspected and bool(np.any(ctx.is_poison)),
              "accuracy_gain_by_source": gains, "sources": sources,
              "notes": "sources derived from the seed; ART's filter_input replaced by an image-wise one; accuracy "
                       "passed as a function"}
    return report, np.asarray(is_clean, int)
