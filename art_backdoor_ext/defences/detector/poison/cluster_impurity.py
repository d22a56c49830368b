"""
Cluster impurity (CI): Gaussian-mixture clustering of each class's features plus a blurring test.

Xiang, Miller, Kesidis: *A benchmark study of backdoor data poisoning defenses for deep neural network classifiers and
a novel defense* (MLSP 2019), as described and evaluated in Xiang, Miller, Wang, Kesidis: *Reverse engineering
imperceptible backdoor attacks on deep neural networks for detection and training set cleansing*
(https://arxiv.org/abs/2010.07489), Sections 3 and 14.2, Tables 2, 3 and 12.

For every class, the penultimate-layer features of its training images are modelled by a Gaussian mixture with full
covariance whose number of components is chosen by BIC. The images of every component are blurred with a small
per-channel mean filter and re-classified: a backdoor pattern made of a few isolated pixels (or any fine-grained
pattern) is destroyed by the blur, so a component made of backdoor images changes its predictions en masse, whereas a
component of clean images keeps them. The *impurity* of a component is ``-log(fraction of its images whose predicted
label is unchanged)``; a component above ``threshold`` (0.5, i.e. fewer than ~60.7% unchanged) is removed and its class
is suspected.

**Beyond the paper.** The RE paper shows that on wide (high-dimensional) features BIC always picks one component
(the full-covariance model has far more parameters than a class has images), so CI sees nothing. This implementation
can first reduce each class's features with PCA (``reduce="pca"``, ``nb_dims``), as activation clustering does;
``reduce=None`` is the paper's CI.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from art_backdoor_ext.defences.base import PoisonFilteringDefenceBase
from art_backdoor_ext.layout import channel_axis
from art_backdoor_ext.utils import check_bool, check_int, check_layer_name, check_number, progress

logger = logging.getLogger(__name__)

REDUCTIONS = (None, "pca")

MIN_CLASS_IMAGES = 2
"""Fewest training images of a class that CI tests; a class with fewer is skipped with the reason recorded."""


def blur_images(x: np.ndarray, size: int = 2, channels_first: Optional[bool] = None) -> np.ndarray:
    """
    Per-channel mean filter (``scipy.ndimage.uniform_filter``) over the two spatial axes only, never across channels
    or images. Returns a new float32 array of the same layout; ``x`` is not modified.

    :param x: A batch of images: ``NCHW``, ``NHWC`` or ``NHW`` (no channel axis).
    :param size: Side of the square window in pixels (the CI authors: 2). ``size=1`` returns a copy of ``x``.
    :param channels_first: Layout of a 4-D batch; ``None`` = inferred (channel axis of size 1, 3 or 4).
    """
    from scipy.ndimage import uniform_filter

    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be an integer >= 1 (the CI authors use 2), got {size!r}.")
    x = np.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"blur_images expects a batch of images (NCHW, NHWC or NHW), got shape {x.shape}.")
    axis = channel_axis(x, channels_first) if x.ndim == 4 else None
    sizes = [1] * x.ndim
    spatial = [a for a in range(1, x.ndim) if a != axis]
    for a in spatial:
        sizes[a] = int(size)
    return uniform_filter(np.asarray(x, dtype=np.float32), size=sizes, mode="nearest")


def select_components_bic(features: np.ndarray, max_components: int = 10, reg_covar: float = 1e-3,
                          patience: int = 2, seed: int = 0, max_iter: int = 200):
    """
    Fit full-covariance Gaussian mixtures with 1, 2, ... components and keep the one with the lowest BIC, stopping
    after ``patience`` consecutive component counts that do not improve on the best BIC (the CI authors' search) or at
    ``max_components`` (never more components than points).

    :return: ``(mixture, bics)`` where ``bics`` lists the BIC of every count tried (index 0 = one component). The
             mixture is ``None`` when there are fewer than two points.
    """
    from sklearn.mixture import GaussianMixture

    n = len(features)
    if n < 2:
        return None, []
    best, best_bic, bics, misses = None, np.inf, [], 0
    for k in range(1, min(max_components, n) + 1):
        gmm = GaussianMixture(n_components=k, covariance_type="full", reg_covar=reg_covar, max_iter=max_iter,
                              random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on tiny or degenerate classes
            gmm.fit(features)
        bic = float(gmm.bic(features))
        bics.append(bic)
        if bic < best_bic:
            best, best_bic, misses = gmm, bic, 0
        else:
            misses += 1
            if misses >= patience:
                break
    return best, bics


class ClusterImpurityDefence(PoisonFilteringDefenceBase):
    """
    Cluster impurity (CI) poison filter. For every class ``c``:

    1. features of the class-``c`` training images at ``layer`` (``None`` = penultimate layer), optionally reduced to
       ``nb_dims`` dimensions by PCA fitted on the class (``reduce="pca"``; ``reduce=None`` = the paper);
    2. Gaussian mixtures with full covariance (scikit-learn), ``1..max_components`` components, chosen by BIC with the
       authors' early stop (``patience`` = 2 consecutive non-improvements) and ``reg_covar`` = 1e-3;
    3. every training image is blurred once with a ``filter_size`` x ``filter_size`` per-channel mean filter and
       re-classified; for each component, impurity = ``-log(fraction of its images whose predicted label is unchanged
       by the blur)`` (a fraction of 0 is floored at ``1 / (n + 1)`` so impurities stay finite);
    4. components with impurity above ``threshold`` are flagged (their images get ``is_clean = 0``), and their class is
       suspected. ``target_class`` is the suspected class with the most impure component.

    Components with fewer than ``min_component_size`` images are never flagged (1 = the paper: every component
    counts). A class with fewer than :data:`MIN_CLASS_IMAGES` (two) images is skipped: it gets one component whose
    impurity is reported but never flagged, the reason is recorded in ``per_class[c]["skipped"]`` and
    ``skipped_classes``, and a ``UserWarning`` names it; when no class could be tested, ``detected`` is ``None`` and
    ``inconclusive`` says why.

    After :meth:`detect_poison`, ``report_``, ``components_`` (per class: the component of each of its images),
    ``class_indices_`` and ``changed_`` (blur changed the prediction, per training image) are kept for
    :meth:`plot_impurity` and :meth:`evaluate_defence`.
    """

    defence_params = PoisonFilteringDefenceBase.defence_params + [
        "layer", "reduce", "nb_dims", "max_components", "reg_covar", "patience", "filter_size",
        "threshold", "min_component_size", "batch_size", "seed",
    ]

    def __init__(
        self,
        classifier,
        x_train: np.ndarray,
        y_train: np.ndarray,
        layer: Optional[str] = None,
        reduce: Optional[str] = "pca",
        nb_dims: int = 10,
        max_components: int = 10,
        reg_covar: float = 1e-3,
        patience: int = 2,
        filter_size: int = 2,
        threshold: float = 0.5,
        min_component_size: int = 1,
        batch_size: int = 256,
        seed: int = 0,
        verbose: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        :param classifier: A trained ART classifier (PyTorch or Keras).
        :param x_train: Training images, in the classifier's layout.
        :param y_train: Training labels, integer or one-hot.
        :param layer: Feature layer name; ``None`` = the penultimate layer (the paper).
        :param reduce: ``"pca"`` (default) reduces each class's features to ``nb_dims`` dimensions before the mixture
                       fit, which keeps BIC from collapsing to one component on wide features; ``None`` fits the raw
                       features (the paper's CI).
        :param nb_dims: PCA dimensions when ``reduce="pca"`` (capped by the feature size and the class size). 10 works
                        on both the compact (64-d) and the wide (256-d) reference CNNs; see
                        ``benchmarks/cluster_impurity.py``.
        :param max_components: Upper bound of the BIC search over the number of mixture components.
        :param reg_covar: Added to the covariance diagonals (the CI authors' code: 1e-3).
        :param patience: Stop the BIC search after this many consecutive counts without improvement (authors: 2).
        :param filter_size: Side of the mean filter in pixels (authors: 2, i.e. a 2x2 blur).
        :param threshold: Impurity above which a component is flagged (authors: 0.5).
        :param min_component_size: Components with fewer images are never flagged (1 = every component counts).
        :param batch_size: Batch size for features and predictions.
        :param seed: Seed of the mixture fits.
        :param kwargs: No other parameter: an unknown key raises a ``ValueError`` naming the valid ones.
        :param verbose: Progress bar over classes.
        """
        super().__init__(classifier, x_train, y_train)
        self._init_params(layer=layer, reduce=reduce, nb_dims=nb_dims, max_components=max_components,
                          reg_covar=reg_covar, patience=patience, filter_size=filter_size, threshold=threshold,
                          min_component_size=min_component_size, batch_size=batch_size, seed=seed, verbose=verbose,
                          **kwargs)
        self.components_: Dict[int, np.ndarray] = {}
        self.class_indices_: Dict[int, np.ndarray] = {}
        self.changed_: Optional[np.ndarray] = None

    # ----------------------------------------------------------------------------------------------------- checks
    def _check_params(self) -> None:
        check_layer_name("layer", self.layer)
        self._adapter.resolve_layer(self.layer)
        if not (self.reduce is None or (isinstance(self.reduce, str) and self.reduce.lower() in REDUCTIONS)):
            raise ValueError(f"reduce must be None (no reduction, the paper) or 'pca' (ART's AC spells it 'PCA'), got "
                             f"{self.reduce!r}.")
        check_int("nb_dims", self.nb_dims, low=1, hint="default 10")
        check_int("max_components", self.max_components, low=1, hint="default 10")
        check_number("reg_covar", self.reg_covar, low=0, hint="the authors use 1e-3")
        check_int("patience", self.patience, low=1, hint="the authors stop after 2")
        check_int("filter_size", self.filter_size, low=2, hint="the authors use a 2x2 mean filter; 1 would not blur")
        check_number("threshold", self.threshold, low=0, low_open=True, hint="the authors use 0.5")
        check_int("min_component_size", self.min_component_size, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_int("seed", self.seed, low=0)
        check_bool("verbose", self.verbose)

    # ----------------------------------------------------------------------------------------------------- steps
    def blur(self, x: np.ndarray) -> np.ndarray:
        """``x`` blurred with the defence's mean filter, in the classifier's layout (see :func:`blur_images`)."""
        return blur_images(x, size=self.filter_size, channels_first=self._adapter.channels_first)

    def reduce_features(self, features: np.ndarray) -> np.ndarray:
        """A class's features reduced by PCA (``reduce="pca"``) or returned as they are (``reduce=None``)."""
        from sklearn.decomposition import PCA

        features = np.asarray(features, np.float64)
        if self.reduce is None:  # the check accepts only None or "pca" (any case)
            return features
        dims = min(self.nb_dims, features.shape[1], len(features) - 1)
        if dims < 1 or dims >= features.shape[1]:
            return features
        return PCA(n_components=dims, random_state=self.seed).fit_transform(features)

    def _cluster_class(self, features: np.ndarray) -> Tuple[np.ndarray, List[float], int]:
        """Component of every image of one class, the BIC of every count tried, and the dimension clustered."""
        feats = self.reduce_features(features)
        gmm, bics = select_components_bic(feats, self.max_components, self.reg_covar, self.patience, self.seed)
        if gmm is None:
            return np.zeros(len(feats), int), bics, int(feats.shape[1]) if feats.ndim == 2 else 0
        assignment = gmm.predict(feats)
        # relabel components by size (largest first) and drop empty ones
        ids, counts = np.unique(assignment, return_counts=True)
        order = ids[np.argsort(-counts, kind="stable")]
        remap = np.empty(gmm.n_components, int)
        remap[order] = np.arange(len(order))
        return remap[assignment], bics, int(feats.shape[1])

    # ----------------------------------------------------------------------------------------------------- API
    def detect_poison(self, **kwargs) -> Tuple[Dict[str, Any], List[int]]:
        """
        Run CI on every class.

        :param kwargs: Any of :attr:`defence_params`, set (atomically) before running.
        :return: ``(report, is_clean)`` with ``is_clean[i] = 0`` for the images of flagged components. The report has
                 ``detected``, ``suspected_classes`` (most impure first), ``target_class``, ``nb_components`` (per
                 class), ``max_impurity`` (per class), ``per_class`` (per class: ``nb_components``, ``dims``,
                 ``component_sizes``, ``impurities``, ``unchanged_fractions``, ``flagged_components``, ``bic``),
                 ``flip_rate`` (fraction of all images whose prediction the blur changes), ``prediction_changed``
                 (per training image: the blur changed its prediction), ``threshold``, ``layer``,
                 ``reduce``, ``skipped_classes`` (class with images -> why it was not tested), ``inconclusive`` (the reason,
                 or ``None``), ``seconds_features``, ``seconds_clustering``, ``seconds_blur`` and ``seconds``.
        """
        return super().detect_poison(**kwargs)

    def _detect(self) -> Tuple[Dict[str, Any], np.ndarray]:
        start = time.perf_counter()
        adapter = self._adapter
        layer = adapter.resolve_layer(self.layer)
        k = adapter.nb_classes

        t0 = time.perf_counter()
        features = adapter.get_features(self._x, layer=layer, batch_size=self.batch_size)
        seconds_features = time.perf_counter() - t0

        t0 = time.perf_counter()
        pred = adapter.predict_labels(self._x, batch_size=self.batch_size)
        pred_blur = adapter.predict_labels(self.blur(self._x), batch_size=self.batch_size)
        changed = pred_blur != pred
        seconds_blur = time.perf_counter() - t0

        is_clean = np.ones(len(self._x), int)
        per_class: Dict[int, Dict[str, Any]] = {}
        skipped: Dict[int, str] = {}
        self.components_, self.class_indices_ = {}, {}
        t0 = time.perf_counter()
        for c in progress(range(k), self.verbose, desc="CI classes", total=k):
            idx = np.flatnonzero(self._labels == c)
            self.class_indices_[c] = idx
            if len(idx) == 0:
                per_class[c] = {"nb_images": 0, "nb_components": 0, "dims": 0, "component_sizes": [],
                                "impurities": [], "unchanged_fractions": [], "flagged_components": [], "bic": [],
                                "skipped": f"class {c} has no training images"}
                self.components_[c] = np.zeros(0, int)
                continue
            comp, bics, dims = self._cluster_class(features[idx])
            nb = int(comp.max()) + 1
            sizes = np.bincount(comp, minlength=nb)
            unchanged = 1.0 - np.bincount(comp, weights=changed[idx].astype(float), minlength=nb) / sizes
            floor = 1.0 / (sizes + 1.0)
            impurity = 0.0 - np.log(np.maximum(unchanged, floor))
            flagged = np.flatnonzero((impurity > self.threshold) & (sizes >= self.min_component_size))
            reason = None
            if len(idx) < MIN_CLASS_IMAGES:  # one image: no mixture to fit, and its "impurity" is one coin toss
                reason = (f"class {c} has {len(idx)} training image(s); CI needs at least {MIN_CLASS_IMAGES} to fit "
                          "a mixture and measure a component's impurity")
                skipped[c] = reason
                flagged = flagged[:0]
            is_clean[idx[np.isin(comp, flagged)]] = 0
            self.components_[c] = comp
            per_class[c] = {
                "nb_images": int(len(idx)),
                "nb_components": nb,
                "dims": dims,
                "component_sizes": sizes.astype(int).tolist(),
                "impurities": [float(v) for v in impurity],
                "unchanged_fractions": [float(v) for v in unchanged],
                "flagged_components": flagged.astype(int).tolist(),
                "bic": bics,
                "skipped": reason,
            }
        seconds_clustering = time.perf_counter() - t0

        max_impurity = {c: max(per_class[c]["impurities"], default=0.0) for c in range(k)}
        suspected = sorted([c for c in range(k) if per_class[c]["flagged_components"]],
                           key=lambda c: (-max_impurity[c], c))
        tested = [c for c in range(k) if per_class[c]["nb_images"] and c not in skipped]
        inconclusive = None
        if skipped:
            why = "; ".join(skipped.values())
            if not tested:
                inconclusive = (f"no class could be tested ({why}); give at least {MIN_CLASS_IMAGES} training images "
                                "per class")
                warnings.warn(f"CI is inconclusive: {inconclusive}.", UserWarning, stacklevel=3)
            else:
                warnings.warn(f"CI skipped {len(skipped)} class(es) ({why}); their images are kept as clean.",
                              UserWarning, stacklevel=3)
            logger.warning("CI skipped classes: %s", why)
        report: Dict[str, Any] = {
            "detected": None if inconclusive else bool(suspected),
            "inconclusive": inconclusive,
            "skipped_classes": skipped,
            "suspected_classes": suspected,
            "target_class": suspected[0] if suspected else None,
            "nb_components": {c: per_class[c]["nb_components"] for c in range(k)},
            "max_impurity": max_impurity,
            "per_class": per_class,
            "flip_rate": float(np.mean(changed)) if len(changed) else 0.0,
            "prediction_changed": changed,
            "nb_flagged": int(np.sum(is_clean == 0)),
            "threshold": float(self.threshold),
            "layer": layer,
            "reduce": self.reduce.lower() if self.reduce else None,
            "nb_dims": self.nb_dims if self.reduce else None,
            "seconds_features": seconds_features,
            "seconds_blur": seconds_blur,
            "seconds_clustering": seconds_clustering,
            "seconds": time.perf_counter() - start,
        }
        self.changed_ = changed
        logger.info("CI: components per class %s; suspected %s; %d images flagged (%.1fs).",
                    report["nb_components"], suspected, report["nb_flagged"], report["seconds"])
        return report, is_clean

    def plot_impurity(self, **kwargs):
        """Impurity of every component of every class with the threshold line (see :func:`plot_impurity`)."""
        from art_backdoor_ext.plotting.impurity import plot_impurity

        if self.report_ is None:
            raise ValueError("Run detect_poison() before plotting.")
        return plot_impurity(self.report_, **kwargs)
