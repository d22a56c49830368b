"""
AEGIS: backdoor detection for adversarially robust models by image translation, t-SNE and mean-shift clustering.

Soremekun, Udeshi, Chattopadhyay: *AEGIS: Exposing Backdoors in Robust Machine Learning Models*
(https://arxiv.org/abs/2003.00865), Algorithm 1 and Sections 3-5.

A robust model "translates" any seed image into a perceptually aligned member of a class when the probability of
that class is maximised with an (effectively unconstrained) targeted L2 PGD. In a backdoored class the model learnt a
mixture of two distributions (clean images and triggered images), so the translated images split into several
groups. Per class, AEGIS embeds the features of the class's training images together with those of the translated
images with t-SNE and counts mean-shift clusters: a clean class gives two (the training cluster and the translated
cluster), a backdoored class more.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from art_backdoor_ext.defences.base import PoisonFilteringDefenceBase
from art_backdoor_ext.utils import check_bool, check_choice, check_int, check_layer_name, check_number, progress

logger = logging.getLogger(__name__)

MIN_CLASS_IMAGES = 2
"""Fewest training images of a class that AEGIS tests; a class with fewer is skipped with the reason recorded."""


def _describe(skipped: Dict[int, str]) -> str:
    return "; ".join(skipped.values())


class AEGISDefence(PoisonFilteringDefenceBase):
    """
    AEGIS (Algorithm 1 of Soremekun et al.): for every class ``y``

    1. draw ``nb_seeds`` seed images from the training set (any class, seeded) and translate them to ``y`` with
       targeted L2 PGD (ART's ``ProjectedGradientDescent(norm=2, targeted=True)``, large ``eps``); all classes are
       translated in one batched PGD call with per-image target labels;
    2. compute the features of the class-``y`` training images and of the translated images at ``layer``
       (``None`` = penultimate layer; the authors' code used the last conv block before pooling, e.g. ``"relu2"``);
    3. optionally reduce them with PCA (the authors' code: ~150 dimensions), then embed them in 2-D with t-SNE
       (perplexity 30);
    4. cluster the embedding with mean-shift (bandwidth from ``sklearn.cluster.estimate_bandwidth`` unless given).

    A class with more than ``cluster_threshold`` (2) clusters is suspected, and any suspected class means the model is
    backdoored; ``target_class`` is the suspected class with the most clusters.

    **What counts as a cluster** (``cluster_rule``). The paper's invariant (Section 5, Tables 6 and 11) is *one cluster
    for the training images and one for the translated images* in a clean class. Two kinds of extra cluster show up
    on small MNIST models, and both are made mostly of *training* images: the training images of some clean classes
    split into two writing styles (a natural sub-population), and, when the backdoor is learnt strongly enough, the
    poisoned training images of the target class form a cluster of their own (a backdoor sub-population). The rules:

    * ``"masking"`` (default): the training clusters count as one, plus every *backdoor* sub-population, and the
      translated images count as one population whether mean-shift gives them clusters of their own or merges them
      into a training cluster (their splits flagged clean models and never a target class in the validation, see
      below; and on one backdoored model all 200 translations joined the 200 poisoned images' cluster, so counting
      only translated-majority clusters gave the target class 2 clusters and missed the backdoor). With the paper's
      ``cluster_threshold`` of 2, a class is therefore suspected exactly when it has a backdoor sub-population. A
      training sub-population (the training images of a cluster other than the class's
      main training cluster, at least ``min_subpopulation`` of them, whether they make a cluster of their own or
      share one with translated images: the poisoned images do either) is a backdoor sub-population when it
      depends on what the translations paint: the pixel positions that the translations
      toward the class, and toward no other class, change the most (the top ``mask_fraction`` of positions of the
      mean ``|x_translated - x_seed|`` toward the class minus its largest value toward another class; translations
      from other classes' seeds carry the trigger) are replaced by the main training cluster's mean image, in the
      sub-population's images and in the main cluster's; when the fraction of the sub-population's images that then
      leave the class exceeds the main cluster's by more than ``mask_flip_threshold``, it is a backdoor
      sub-population. Poisoned images are source-class images that belong to the target class only through the
      trigger, so they leave; a writing style belongs to the class through its own strokes, and the main cluster's
      mean image puts the class's usual strokes back, so it stays. ``is_clean`` marks exactly the backdoor
      sub-populations.
    * ``"translated"`` (the earlier default): the training clusters count as one, plus every translated cluster. It
      never flags a writing style, but it merges a backdoor sub-population into the training cluster and misses it.
    * ``"all"``: every mean-shift cluster counts, as Algorithm 1 literally does; it flags backdoor sub-populations
      and writing styles alike.

    The default was chosen by measurement over clean and backdoored robust models (one AEGIS run per model, every
    rule applied to it), beside two other candidate rules (``benchmarks/aegis.py``: a training sub-cluster with
    hardly any translated image among its t-SNE neighbours; a sub-cluster whose distinctive pattern, its mean image
    minus the main cluster's, resembles what the translations carry): it is the only rule that flagged no clean
    model and found every backdoored one, with the widest gap between the flip rates of poisoned and natural
    sub-populations. ``benchmarks/results/aegis.md`` holds the validation table and the operating boundary
    (detection versus the number of poisoned images and the radius of robust training). In short, AEGIS detects a
    backdoor when the model has learnt it strongly enough for its poisoned images to stand apart from the clean
    ones, in a cluster of their own or in the translations' cluster; with weaker robust training and few poisoned
    images they mix with clean images in the same cluster, the masking test sees a diluted flip rate, and nothing
    is flagged. Measured (mnist-5k, robust compact CNN, seed 0): detected with the right target down to 40 poisoned
    images (1%) for a distributed and a localised trigger at training radius 1.0 (8 epochs of 7 steps), and for a 5%
    trigger at radii 0.5, 1.0 and 2.0 and with 5 epochs of 5 steps; missed: both triggers at 20 images (0.5%; the
    localised one was detected before the random start), and a 1% localised trigger under the weakest training
    (radius 0.5, 5 epochs of 5 steps). No clean
    robust model (5 seeds at radius 1.0; radii 0.5 and 2.0; 5 epochs of 5 steps) was flagged.

    **Reproduction at small scale** (issue 6: robust compact CNNs on mnist-5k, 1% localised trigger, 5 epochs of
    eps-0.5 robust training): the translation premise holds (almost every translation to the target class carries
    the trigger, none to other classes), but at that operating point the target class shows two clusters like the
    clean classes: the translations to the target class form one cluster, not the two of the paper's Figure 7, and
    the poisoned training images scatter among the clean ones or partly join the translated cluster.

    **Random start** (``init_noise``, a deviation from the paper, whose PGD starts at the seed image): each
    translation starts from its seed image plus uniform noise in ``[0, 0.1]``. Without it, AEGIS missed both 5%
    backdoors on a robust *Keras* model that it detects on the same PyTorch model (``keras_parity_aegis.md``): in
    that model all 16 first-layer convolution biases had become negative, so on MNIST's constant black border every
    first-layer unit is inactive and the gradient of every loss is *exactly zero* on 129 of the 784 pixels, the
    trigger's corners among them; PGD started at a real image can then never paint the trigger, translations toward
    the target draw a 7 instead, and the masking test masks the wrong pixels (flip rate of the poisoned images 0.00
    instead of 0.99). Keras initialises biases at zero where PyTorch draws them at random (4 of 16 stayed positive in
    the PyTorch model), which is why only the Keras model had the dead border. With the random start the Keras
    translations paint the trigger (mean change 0.69 on the trigger pixels, 0.14 elsewhere) and the poisoned images
    flip 0.99. ``init_noise=0`` gives the paper's start.

    Defaults versus the paper: ``nb_seeds=200`` (paper 500) and ``max_iter=40`` steps of 0.5 (authors' code: 50-150
    steps of 0.25-1.5) keep AEGIS at about 22 s per 10-class model on two quiet CPU cores (compact CNN, mnist-5k);
    50-60 steps gave the same cluster counts.
    ``pca_components=50`` only matters for conv features (the penultimate layer of the reference CNNs is 64-d).

    AEGIS is a **model-level** detector: the paper decides whether a model (and which class) is backdoored and does
    not mark training images. The ``is_clean`` list returned by :meth:`detect_poison` is our extension: the training
    images in a backdoor sub-population (``"masking"``), or, under the other rules, the training images of a
    suspected class that fall outside that class's main training cluster (the mean-shift cluster holding most of its
    training images), are marked 0, every other image 1.

    AEGIS presumes an adversarially robust model (e.g. trained with :func:`art_backdoor_ext.models.train_robust`);
    a warning is raised when a small untargeted L2 PGD already flips most predictions.

    After :meth:`detect_poison` the 2-D embeddings, cluster labels and translated images are kept per class, for
    :meth:`plot_clusters` and :meth:`plot_cluster_exemplars` (the paper's Figures 4-7).
    """

    defence_params = PoisonFilteringDefenceBase.defence_params + [
        "nb_seeds", "eps", "eps_step", "max_iter", "init_noise", "layer", "pca_components", "perplexity", "tsne_iter",
        "bandwidth", "bandwidth_quantile", "cluster_threshold", "cluster_rule", "min_cluster_size",
        "mask_fraction", "mask_flip_threshold", "min_subpopulation", "max_train_per_class", "batch_size",
        "robustness_check", "robustness_eps", "seed",
    ]

    def __init__(
        self,
        classifier,
        x_train: np.ndarray,
        y_train: np.ndarray,
        nb_seeds: int = 200,
        eps: float = 100.0,
        eps_step: float = 0.5,
        max_iter: int = 40,
        init_noise: float = 0.1,
        layer: Optional[str] = None,
        pca_components: Optional[int] = 50,
        perplexity: float = 30.0,
        tsne_iter: int = 500,
        bandwidth: Optional[float] = None,
        bandwidth_quantile: float = 0.3,
        cluster_threshold: int = 2,
        cluster_rule: str = "masking",
        min_cluster_size: int = 1,
        mask_fraction: float = 0.05,
        mask_flip_threshold: float = 0.5,
        min_subpopulation: int = 10,
        max_train_per_class: Optional[int] = None,
        batch_size: int = 256,
        robustness_check: bool = True,
        robustness_eps: float = 1.0,
        seed: int = 0,
        verbose: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        :param classifier: A trained ART classifier (PyTorch or Keras), ideally adversarially robust.
        :param x_train: Training images (the model's layout).
        :param y_train: Training labels, integer or one-hot.
        :param nb_seeds: Seed images translated per class (paper: 500).
        :param eps: L2 budget of the translation (paper: 100 on MNIST, i.e. effectively unconstrained).
        :param eps_step: L2 PGD step size (authors' code: 0.25-1.5).
        :param max_iter: PGD steps (authors' code: 50-150).
        :param init_noise: PGD starts from each seed image plus uniform noise in ``[0, init_noise]`` (seeded, clipped
                           to the classifier's range); 0 = start at the seed image, as the paper. The translation
                           (what the masking test reads) is still measured from the seed image. See the class
                           docstring ("Random start").
        :param layer: Feature layer name; ``None`` = the penultimate layer (the paper). Conv features before pooling
                      (``"relu2"`` in the reference CNNs) follow the authors' code.
        :param pca_components: Reduce the features to this many dimensions with PCA before t-SNE when they have more;
                               ``None`` or 0 = no PCA.
        :param perplexity: t-SNE perplexity (paper: 30); lowered automatically for very small classes.
        :param tsne_iter: t-SNE optimisation iterations (>= 250; scikit-learn's default is 1000, 500 suffice for a
                          few hundred points).
        :param bandwidth: Mean-shift bandwidth; ``None`` = ``estimate_bandwidth`` per class (paper).
        :param bandwidth_quantile: ``quantile`` passed to ``estimate_bandwidth`` (scikit-learn's default 0.3).
        :param cluster_threshold: A class with more clusters than this is suspected (paper: 2).
        :param cluster_rule: ``"masking"``: the clusters made mostly of training images count as one, plus each
                             one that the masking test calls a backdoor sub-population; the clusters made mostly of
                             translated images count as one; ``"translated"``: the clusters made mostly of training images count as
                             one, each cluster made mostly of translated images counts (the paper's invariant);
                             ``"all"``: every cluster counts (Algorithm 1 literally). See the class docstring.
        :param min_cluster_size: Clusters with fewer points are not counted (1 = count every cluster, as the paper).
        :param mask_fraction: Fraction of the pixel positions masked by the masking test (the positions that the
                              translations toward the class, and toward no other class, change the most).
        :param mask_flip_threshold: A training sub-population is a backdoor sub-population when masking takes more of
                                    its images out of the class than of the main training cluster's, by more than
                                    this fraction.
        :param min_subpopulation: Clusters with fewer training images are not tested (they count as the main
                                  training cluster or as translated clusters).
        :param max_train_per_class: Use at most this many training images per class (random, seeded); ``None`` = all.
                                    Images left out are always marked clean in ``is_clean``.
        :param batch_size: Batch size of PGD and feature extraction.
        :param robustness_check: Warn when the classifier does not look adversarially robust.
        :param robustness_eps: L2 radius of the robustness check (untargeted PGD, 10 steps, 100 images).
        :param seed: Seed for seed sampling, subsampling, PGD, t-SNE and bandwidth estimation.
        :param kwargs: No other parameter: an unknown key raises a ``ValueError`` naming the valid ones.
        :param verbose: Progress bars.
        """
        super().__init__(classifier, x_train, y_train)
        self._init_params(
            nb_seeds=nb_seeds, eps=eps, eps_step=eps_step, max_iter=max_iter, init_noise=init_noise, layer=layer,
            pca_components=pca_components, perplexity=perplexity, tsne_iter=tsne_iter, bandwidth=bandwidth,
            bandwidth_quantile=bandwidth_quantile, cluster_threshold=cluster_threshold, cluster_rule=cluster_rule,
            min_cluster_size=min_cluster_size, mask_fraction=mask_fraction, mask_flip_threshold=mask_flip_threshold,
            min_subpopulation=min_subpopulation, max_train_per_class=max_train_per_class, batch_size=batch_size,
            robustness_check=robustness_check, robustness_eps=robustness_eps, seed=seed, verbose=verbose,
            **kwargs,
        )
        self.embeddings_: Dict[int, np.ndarray] = {}
        self.cluster_labels_: Dict[int, np.ndarray] = {}
        self.is_translated_: Dict[int, np.ndarray] = {}
        self.translated_: Dict[int, np.ndarray] = {}
        self.train_indices_: Dict[int, np.ndarray] = {}

    # ----------------------------------------------------------------------------------------------------- checks
    def _check_params(self) -> None:
        check_int("nb_seeds", self.nb_seeds, low=2, hint="the paper uses 500")
        check_number("eps", self.eps, low=0, low_open=True, hint="the paper: 100 on MNIST")
        check_number("eps_step", self.eps_step, low=0, low_open=True)
        check_int("max_iter", self.max_iter, low=1)
        check_number("init_noise", self.init_noise, low=0, high=1, hint="0 = start PGD at the seed image (the paper)")
        check_layer_name("layer", self.layer)
        self._adapter.resolve_layer(self.layer)
        if self.pca_components is not None:
            check_int("pca_components", self.pca_components, low=0, hint="None or 0 = no PCA")
        check_number("perplexity", self.perplexity, low=0, low_open=True, hint="the paper: 30")
        check_int("tsne_iter", self.tsne_iter, low=250, hint="scikit-learn's minimum is 250")
        if self.bandwidth is not None:
            check_number("bandwidth", self.bandwidth, low=0, low_open=True, hint="None = estimated")
        check_number("bandwidth_quantile", self.bandwidth_quantile, low=0, high=1, low_open=True)
        check_int("cluster_threshold", self.cluster_threshold, low=1, hint="the paper: 2")
        check_choice("cluster_rule", self.cluster_rule, ("masking", "translated", "all"),
                     hint="'masking': training clusters count as one unless masking the translations' pixels takes a "
                          "sub-cluster out of the class; 'translated': training clusters count as one, the paper's "
                          "invariant; 'all': every cluster, Algorithm 1")
        check_number("mask_fraction", self.mask_fraction, low=0, high=1, low_open=True, high_open=True)
        check_number("mask_flip_threshold", self.mask_flip_threshold, low=0, high=1, low_open=True, high_open=True)
        check_int("min_subpopulation", self.min_subpopulation, low=1)
        check_int("min_cluster_size", self.min_cluster_size, low=1)
        if self.max_train_per_class is not None:
            check_int("max_train_per_class", self.max_train_per_class, low=2)
        check_int("batch_size", self.batch_size, low=1)
        check_bool("robustness_check", self.robustness_check)
        check_number("robustness_eps", self.robustness_eps, low=0, low_open=True)
        check_int("seed", self.seed, low=0)
        check_bool("verbose", self.verbose)

    # ----------------------------------------------------------------------------------------------------- steps
    def check_robustness(self, nb_images: int = 100, eps: Optional[float] = None) -> float:
        """
        Fraction of (correctly classified) training images whose prediction an untargeted L2 PGD of radius ``eps``
        (default ``robustness_eps``, 10 steps) flips. Warns when it is over one half: AEGIS presumes a robust model.
        """
        from art.attacks.evasion import ProjectedGradientDescent

        eps = self.robustness_eps if eps is None else eps
        rng = np.random.default_rng(self.seed + 1)
        idx = rng.choice(len(self._x), size=min(nb_images, len(self._x)), replace=False)
        x = self._x[idx]
        pred = self._adapter.predict_labels(x)
        x = x[pred == self._labels[idx]]
        if len(x) == 0:
            flip = 1.0
        else:
            pgd = ProjectedGradientDescent(self.classifier, norm=2, eps=eps, eps_step=eps / 4, max_iter=10,
                                           targeted=False, num_random_init=0, batch_size=self.batch_size,
                                           verbose=False)
            with self._adapter.seeded(self.seed + 1):
                x_adv = pgd.generate(x)
            flip = float(np.mean(self._adapter.predict_labels(x_adv) != self._adapter.predict_labels(x)))
        if flip > 0.5:
            msg = (f"AEGIS presumes an adversarially robust model, but an L2 PGD of radius {eps} flips {flip:.0%} of "
                   "the predictions; translated images will be adversarial noise rather than class features and the "
                   "cluster counts may be meaningless. Train with art_backdoor_ext.models.train_robust.")
            logger.warning(msg)
            warnings.warn(msg, UserWarning, stacklevel=3)
        return flip

    def translate(self) -> Tuple[np.ndarray, np.ndarray]:
        """
        Translate ``nb_seeds`` seed images to every class with one batched targeted L2 PGD.

        :return: ``(x_translated, target_labels)``, ``nb_seeds`` images per class, grouped by class.
        """
        from art.attacks.evasion import ProjectedGradientDescent

        k = self._adapter.nb_classes
        rng = np.random.default_rng(self.seed)
        n_total = self.nb_seeds * k
        seeds = rng.choice(len(self._x), size=n_total, replace=n_total > len(self._x))
        targets = np.repeat(np.arange(k), self.nb_seeds)
        pgd = ProjectedGradientDescent(self.classifier, norm=2, eps=self.eps, eps_step=self.eps_step,
                                       max_iter=self.max_iter, targeted=True, num_random_init=0,
                                       batch_size=self.batch_size, verbose=self.verbose)
        # ART's PGD draws from global generators: seed them for this call only, and restore the caller's state
        x_start = self._x[seeds]
        if self.init_noise > 0:  # a random start, so that PGD can move pixels where the gradient is exactly zero
            noise = rng.uniform(0.0, self.init_noise, size=x_start.shape).astype(np.float32)
            clip = self.classifier.clip_values
            x_start = x_start + noise if clip is None else np.clip(x_start + noise, clip[0], clip[1])
        with self._adapter.seeded(self.seed):
            x_trans = pgd.generate(x_start, y=np.eye(k, dtype=np.float32)[targets])
        self.seed_indices_ = seeds
        return np.asarray(x_trans, np.float32), targets

    def _embed(self, feats: np.ndarray) -> np.ndarray:
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE

        feats = np.asarray(feats, np.float64)
        if self.pca_components and feats.shape[1] > self.pca_components and len(feats) > self.pca_components:
            feats = PCA(n_components=self.pca_components, random_state=self.seed).fit_transform(feats)
        perplexity = float(min(self.perplexity, max(1.0, (len(feats) - 1) / 3.0)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", max_iter=self.tsne_iter,
                    random_state=self.seed)
        return tsne.fit_transform(feats).astype(np.float32)

    @staticmethod
    def _degenerate(cls: int, nb_train: int, feats: np.ndarray) -> Optional[str]:
        """
        Why class ``cls`` cannot be tested (``None`` when it can): fewer than :data:`MIN_CLASS_IMAGES` training
        images (no training cluster to count, split or mask), or feature vectors that are all identical (t-SNE has
        nothing to embed; scikit-learn's Barnes-Hut t-SNE crashes the interpreter on them).
        """
        if nb_train < MIN_CLASS_IMAGES:
            return (f"class {cls} has {nb_train} training image(s); AEGIS needs at least {MIN_CLASS_IMAGES} to count "
                    "the class's training clusters")
        spread = float(np.max(np.ptp(feats, axis=0))) if feats.size else 0.0
        if not spread > 1e-6 * (1.0 + float(np.max(np.abs(feats)))):
            return (f"the features of class {cls}'s {len(feats)} training and translated images are all identical; "
                    "t-SNE cannot embed them")
        return None

    def _cluster(self, emb: np.ndarray) -> Tuple[np.ndarray, float]:
        from sklearn.cluster import MeanShift, estimate_bandwidth

        bw = self.bandwidth
        if bw is None:
            bw = float(estimate_bandwidth(emb, quantile=self.bandwidth_quantile, random_state=self.seed))
            if not bw > 0:
                bw = float(np.std(emb)) or 1.0
        labels = MeanShift(bandwidth=bw, bin_seeding=True).fit_predict(emb)
        return labels, float(bw)

    def translation_masks(self, x_trans: np.ndarray, targets: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """
        Per class, the pixel positions that the translations *toward that class, and toward no other*, paint: the
        mean translation perturbation ``x_translated - x_seed`` toward class ``y`` (absolute value, averaged over
        channels) minus its largest value toward any other class; the top ``mask_fraction`` of positions.

        :return: Boolean masks of shape ``(nb_classes, H, W)``.
        """
        k = self._adapter.nb_classes
        delta = np.asarray(x_trans, np.float32) - self._x[seeds]
        channel_axis = 0 if self._adapter.channels_first else -1  # of one image
        mean = np.stack([np.abs(delta[targets == c].mean(axis=0)).mean(axis=channel_axis) for c in range(k)])
        nb_pixels = max(1, int(round(self.mask_fraction * mean[0].size)))
        masks = np.zeros(mean.shape, bool)
        for c in range(k):
            specific = mean[c] - np.delete(mean, c, axis=0).max(axis=0)
            masks[c].flat[np.argsort(-specific, axis=None)[:nb_pixels]] = True
        return masks

    def _flip_rate(self, indices: np.ndarray, cls: int, mask: np.ndarray, fill: np.ndarray) -> float:
        """Fraction of training images ``indices`` not predicted ``cls`` once the positions in ``mask`` hold ``fill``."""
        x = self._x[indices].copy()
        if self._adapter.channels_first:
            x[:, :, mask] = fill[:, mask]
        else:
            x[:, mask, :] = fill[mask, :]
        return float(np.mean(self._adapter.predict_labels(x, batch_size=self.batch_size) != cls))

    def _subpopulations(self, cls: int, idx: np.ndarray, labels: np.ndarray, translated: np.ndarray,
                        mask: np.ndarray) -> Tuple[Any, List[Dict[str, Any]]]:
        """
        The masking test of every training sub-population of class ``cls``: the main training cluster (most training
        images) is the reference; the training images of every other cluster (made mostly of training images, or
        sharing a cluster with translated images), when at least ``min_subpopulation``, are a candidate. Its images
        and the main cluster's get the translations' pixels (``mask``) replaced by the main cluster's mean image; a
        candidate whose flip rate (images leaving ``cls``) exceeds the main cluster's by more than
        ``mask_flip_threshold`` is a backdoor sub-population.

        :return: ``(main cluster id, [per candidate: cluster, nb_train, nb_translated, flip, flip_main, backdoor])``.
        """
        train_labels = labels[: len(idx)]
        ids, counts = np.unique(train_labels, return_counts=True)
        main = ids[int(np.argmax(counts))]
        main_idx = idx[train_labels == main]
        fill = self._x[main_idx].mean(axis=0)
        flip_main = None
        subpopulations = []
        for i in np.unique(labels):
            nb_train = int(np.sum(train_labels == i))
            nb_trans = int(np.sum((labels == i) & translated))
            if i == main or nb_train < self.min_subpopulation:
                continue
            if flip_main is None:
                flip_main = self._flip_rate(main_idx, cls, mask, fill)
            flip = self._flip_rate(idx[train_labels == i], cls, mask, fill)
            subpopulations.append({"cluster": int(i), "nb_train": nb_train, "nb_translated": nb_trans,
                                   "flip": flip, "flip_main": flip_main,
                                   "backdoor": bool(flip - flip_main > self.mask_flip_threshold)})
        return main, subpopulations

    # ----------------------------------------------------------------------------------------------------- API
    def detect_poison(self, **kwargs) -> Tuple[Dict[str, Any], List[int]]:
        """
        Run AEGIS on every class.

        :param kwargs: Any of :attr:`defence_params`, set (atomically) before running.
        :return: ``(report, is_clean)``. The report has ``detected``, ``suspected_classes``, ``target_class``,
                 ``nb_clusters`` (per class, by ``cluster_rule``), ``per_class`` (per class: ``nb_clusters``,
                 ``nb_clusters_all`` (every cluster), ``nb_translated_clusters`` (clusters made mostly of translated
                 images), ``bandwidth``,
                 ``cluster_sizes_train`` and ``cluster_sizes_translated`` (per counted cluster, largest first),
                 ``translation_success`` (fraction of translated images predicted as the class),
                 ``train_in_translated_clusters`` (training images in clusters made mostly of translated images: a
                 diagnostic of ours, not the paper's rule)), ``layer``, ``translation_success`` (overall),
                 ``robustness_flip_rate`` and ``seconds``. ``skipped_classes`` maps each class that could not be
                 tested (fewer than :data:`MIN_CLASS_IMAGES` training images, or identical features) to the reason;
                 such a class has ``nb_clusters`` ``None`` and is never suspected, and a ``UserWarning`` names it.
                 When classes were skipped and no tested class is suspected, ``detected`` is ``None`` and
                 ``inconclusive`` holds the reason (otherwise ``inconclusive`` is ``None``). ``is_clean`` (1 = clean)
                 is our extension, see the class docstring.
        """
        return super().detect_poison(**kwargs)

    def _detect(self) -> Tuple[Dict[str, Any], np.ndarray]:
        start = time.perf_counter()
        adapter = self._adapter
        layer = adapter.resolve_layer(self.layer)
        k = adapter.nb_classes
        flip = self.check_robustness() if self.robustness_check else None

        t0 = time.perf_counter()
        x_trans, targets = self.translate()
        seconds_pgd = time.perf_counter() - t0
        trans_pred = adapter.predict_labels(x_trans)
        feats_trans = adapter.get_features(x_trans, layer=layer, batch_size=self.batch_size)
        feats_train = adapter.get_features(self._x, layer=layer, batch_size=self.batch_size)
        masks = self.translation_masks(x_trans, targets, self.seed_indices_)

        rng = np.random.default_rng(self.seed + 2)
        is_clean = np.ones(len(self._x), int)
        per_class: Dict[int, Dict[str, Any]] = {}
        skipped: Dict[int, str] = {}
        self.embeddings_, self.cluster_labels_, self.is_translated_ = {}, {}, {}
        self.translated_, self.train_indices_ = {}, {}
        t0 = time.perf_counter()
        for c in progress(range(k), self.verbose, desc="AEGIS classes", total=k):
            idx = np.flatnonzero(self._labels == c)
            if self.max_train_per_class is not None and len(idx) > self.max_train_per_class:
                idx = np.sort(rng.choice(idx, self.max_train_per_class, replace=False))
            sel = targets == c
            feats = np.concatenate([feats_train[idx], feats_trans[sel]])
            translated = np.r_[np.zeros(len(idx), bool), np.ones(int(sel.sum()), bool)]
            reason = self._degenerate(c, len(idx), feats)
            if reason:  # skipped, not guessed: its cluster count would say nothing (and t-SNE crashes on it)
                skipped[c] = reason
                per_class[c] = {"nb_clusters": None, "skipped": reason, "nb_train": int(len(idx)),
                                "nb_translated": int(sel.sum()),
                                "translation_success": float(np.mean(trans_pred[sel] == c)) if sel.any() else None}
                continue
            emb = self._embed(feats)
            labels, bw = self._cluster(emb)
            ids, counts = np.unique(labels, return_counts=True)
            order = np.argsort(-counts)
            ids, counts = ids[order], counts[order]
            counted = ids[counts >= self.min_cluster_size]
            sizes_train = [int(np.sum((labels == i) & ~translated)) for i in counted]
            sizes_trans = [int(np.sum((labels == i) & translated)) for i in counted]
            n_translated = int(sum(b > a for a, b in zip(sizes_train, sizes_trans)))
            n_training = int(len(counted)) - n_translated
            main, subpopulations = self._subpopulations(c, idx, labels, translated, masks[c])
            n_backdoor = int(sum(p["backdoor"] for p in subpopulations))
            if self.cluster_rule == "all":
                n_clusters = int(len(counted))
            elif self.cluster_rule == "masking":  # the translations are one population even when merged
                n_clusters = min(n_training, 1) + n_backdoor + int(sel.any())
            else:
                n_clusters = min(n_training, 1) + n_translated
            # training images inside clusters made mostly of translated images (a diagnostic, not the paper's rule)
            mixed = sum(a for a, b in zip(sizes_train, sizes_trans) if b > a)
            per_class[c] = {
                "nb_clusters": n_clusters,
                "nb_clusters_all": int(len(counted)),
                "nb_translated_clusters": n_translated,
                "bandwidth": bw,
                "cluster_sizes_train": sizes_train,
                "cluster_sizes_translated": sizes_trans,
                "nb_train": int(len(idx)),
                "nb_translated": int(sel.sum()),
                "translation_success": float(np.mean(trans_pred[sel] == c)),
                "train_in_translated_clusters": int(mixed),
                "subpopulations": subpopulations,
                "nb_backdoor_subpopulations": n_backdoor,
            }
            if n_clusters > self.cluster_threshold:
                if self.cluster_rule == "masking":
                    flagged = [p["cluster"] for p in subpopulations if p["backdoor"]]
                    is_clean[idx[np.isin(labels[: len(idx)], flagged)]] = 0
                else:
                    is_clean[idx[labels[: len(idx)] != main]] = 0
            self.embeddings_[c] = emb
            self.cluster_labels_[c] = labels
            self.is_translated_[c] = translated
            self.translated_[c] = x_trans[sel]
            self.train_indices_[c] = idx
        seconds_cluster = time.perf_counter() - t0

        nb_clusters = {c: per_class[c]["nb_clusters"] for c in range(k)}
        suspected = sorted([c for c in range(k) if c not in skipped and nb_clusters[c] > self.cluster_threshold],
                           key=lambda c: (-nb_clusters[c], c))
        inconclusive = None
        if skipped and not suspected:
            # a model-level "no backdoor" would cover classes that were never tested: say so instead
            inconclusive = (f"{len(skipped)} of {k} classes could not be tested ({_describe(skipped)}); no tested "
                            "class is suspected, but the untested ones may hold the backdoor. Give at least "
                            f"{MIN_CLASS_IMAGES} varied training images of every class.")
            logger.warning("AEGIS inconclusive: %s", inconclusive)
            warnings.warn(f"AEGIS is inconclusive: {inconclusive}", UserWarning, stacklevel=3)
        elif skipped:
            warnings.warn(f"AEGIS skipped {len(skipped)} of {k} classes ({_describe(skipped)}); the suspected classes "
                          "come from the others.", UserWarning, stacklevel=3)
        report: Dict[str, Any] = {
            "detected": None if inconclusive else bool(suspected),
            "inconclusive": inconclusive,
            "skipped_classes": skipped,
            "suspected_classes": suspected,
            "target_class": suspected[0] if suspected else None,
            "nb_clusters": nb_clusters,
            "per_class": per_class,
            "layer": layer,
            "cluster_rule": self.cluster_rule,
            "robustness_flip_rate": flip,
            "translation_success": float(np.mean(trans_pred == targets)),
            "seconds_translation": seconds_pgd,
            "seconds_clustering": seconds_cluster,
            "seconds": time.perf_counter() - start,
        }
        logger.info("AEGIS: clusters per class %s; suspected %s (%.1fs).", nb_clusters, suspected, report["seconds"])
        return report, is_clean

    # ----------------------------------------------------------------------------------------------------- plots
    def cluster_data(self, cls: int) -> Dict[str, Any]:
        """The 2-D embedding, cluster labels, training/translated mask and translated images of one class."""
        skipped = (self.report_ or {}).get("skipped_classes", {})
        if cls in skipped:
            raise ValueError(f"Class {cls!r} was not tested by AEGIS: {skipped[cls]}.")
        if cls not in self.embeddings_:
            raise ValueError(f"No AEGIS results for class {cls!r}; run detect_poison() first "
                             f"(classes available: {sorted(self.embeddings_)}).")
        return {
            "cls": int(cls),
            "embedding": self.embeddings_[cls],
            "labels": self.cluster_labels_[cls],
            "is_translated": self.is_translated_[cls],
            "translated": self.translated_[cls],
            "train_images": self._x[self.train_indices_[cls]],
            "nb_clusters": self.report_["nb_clusters"][cls] if self.report_ else None,
        }

    def plot_clusters(self, cls: int, **kwargs):
        """t-SNE points of one class coloured by mean-shift cluster, training vs translated marked (paper Fig. 4-6)."""
        from art_backdoor_ext.plotting.clusters import plot_clusters

        return plot_clusters(self, cls, **kwargs)

    def plot_cluster_exemplars(self, cls: int, **kwargs):
        """Translated images of one class, a row per cluster (paper Fig. 7): shows the trigger the model learnt."""
        from art_backdoor_ext.plotting.clusters import plot_cluster_exemplars

        return plot_cluster_exemplars(self, cls, **kwargs)
