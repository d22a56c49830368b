"""AEGIS (issues 6 and 14) on small robust (L2 PGD-trained) compact CNNs on mnist-5k: the translation premise holds (the
trigger appears in translations to the target class only), the report is complete, a backdoored robust model inside
the operating boundary (eps 1.0, 8 robust epochs, 5% distributed trigger) is detected with the right target and
``is_clean`` removes its poisoned sub-cluster, clean robust models are not flagged under the default rule, bad
parameters raise and inputs are never modified (see the AEGISDefence docstring and benchmarks/results/aegis.md)."""
import json
import warnings

import numpy as np
import pytest

from art_backdoor_ext.defences.detector.poison import AEGISDefence
from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.evaluation import Scenario

# Small robust (L2 PGD, eps 0.5, 5 steps) compact CNNs: 1% of mnist-5k poisoned (the paper's rate) and a clean one.
# Both are the benchmark's models too (benchmarks/aegis.py trains the same scenarios).
ROBUST = dict(nb_epochs=5, robust=True, robust_kwargs={"max_iter": 5})
LOCALISED_ROBUST = Scenario(attack="localised", target=7, fraction=0.01, **ROBUST)
CLEAN_ROBUST = Scenario(attack=None, **ROBUST)
CLEAN = Scenario(attack=None, nb_epochs=5)  # standard model, shared with tests/test_models.py and others
# Inside AEGIS's operating boundary (benchmarks/results/aegis.md): L2 PGD eps 1.0, 8 epochs of 7 steps, 5% of
# mnist-5k poisoned with the distributed trigger; the benchmark's validation model of seed 0.
DISTRIBUTED_ROBUST = Scenario(attack="distributed", target=7, fraction=0.05, nb_epochs=8, robust=True,
                              robust_kwargs={"eps": 1.0, "max_iter": 7})
FAST = dict(nb_seeds=100, max_train_per_class=200)
_DEFENCES = {}


def _run(ctx, key, **params):
    params = params or FAST
    if key not in _DEFENCES:
        x0, y0, w0 = ctx.x_train.copy(), ctx.y_train.copy(), get_adapter(ctx.classifier).get_weights()
        defence = AEGISDefence(ctx.classifier, ctx.x_train, ctx.y_train, **params)
        report, is_clean = defence.detect_poison()
        np.testing.assert_array_equal(ctx.x_train, x0)
        np.testing.assert_array_equal(ctx.y_train, y0)
        for a, b in zip(w0, get_adapter(ctx.classifier).get_weights()):
            np.testing.assert_array_equal(a, b)
        _DEFENCES[key] = (defence, report, is_clean)
    return _DEFENCES[key]


@pytest.mark.slow
def test_translation_exposes_the_trigger(scenario_ctx):
    # the premise AEGIS builds on: translating seeds to the target class of a robust backdoored model paints the
    # trigger (the 3x3 square at the bottom-right corner), translating them to any other class does not
    ctx = scenario_ctx(LOCALISED_ROBUST)
    defence, report, _ = _run(ctx, "localised")
    assert report["translation_success"] > 0.9

    def corner(c):
        return float(np.mean(defence.translated_[c][:, 0, 24:27, 24:27].mean(axis=(1, 2)) > 0.5))

    assert corner(7) > 0.8
    assert max(corner(c) for c in range(10) if c != 7) < 0.1


def test_report_is_complete_on_a_robust_backdoored_model(scenario_ctx):
    ctx = scenario_ctx(LOCALISED_ROBUST)
    assert ctx.asr > 0.8, "the backdoor must take for the test to mean anything"
    _, report, is_clean = _run(ctx, "localised")
    assert len(is_clean) == len(ctx.x_train) and set(np.unique(is_clean)) <= {0, 1}
    for key in ("detected", "target_class", "suspected_classes", "nb_clusters", "per_class", "seconds", "layer"):
        assert key in report
    for c in range(10):
        pc = report["per_class"][c]
        assert sum(pc["cluster_sizes_train"]) == pc["nb_train"] == 200
        assert sum(pc["cluster_sizes_translated"]) == pc["nb_translated"] == 100
        assert pc["nb_clusters"] == report["nb_clusters"][c] >= 2  # training and translated images never merge
        # default rule: the training-majority clusters count as one, plus each training sub-cluster that the masking
        # test calls a backdoor sub-population; the translations count as one population, merged or not
        assert pc["nb_backdoor_subpopulations"] == sum(p["backdoor"] for p in pc["subpopulations"])
        assert pc["nb_clusters"] == 2 + pc["nb_backdoor_subpopulations"]
        # a backdoor sub-population may share a cluster with translated images, and then counts apart from them
        assert pc["nb_clusters"] <= max(pc["nb_clusters_all"], 2) + pc["nb_backdoor_subpopulations"]
    assert report["detected"] == bool(report["suspected_classes"])
    assert all(report["nb_clusters"][c] > 2 for c in report["suspected_classes"])


@pytest.mark.slow
def test_detects_the_target_class_and_removes_its_poisoned_subcluster(scenario_ctx):
    # inside the operating boundary the poisoned training images form a cluster of their own in the target class;
    # masking the pixels that the translations to class 7 (and to no other class) paint takes them out of class 7,
    # not the class's main cluster, so the default rule counts it (the earlier "translated" rule merged it)
    ctx = scenario_ctx(DISTRIBUTED_ROBUST)
    assert ctx.asr > 0.9 and ctx.clean_accuracy > 0.9
    defence, report, is_clean = _run(ctx, "distributed", cluster_rule="masking")
    assert report["detected"] and report["target_class"] == 7
    assert report["suspected_classes"] == [7]
    backdoor = [p for p in report["per_class"][7]["subpopulations"] if p["backdoor"]]
    assert backdoor and all(p["flip"] > 0.9 > 0.1 > p["flip_main"] for p in backdoor)
    flagged = np.asarray(is_clean) == 0
    assert flagged.sum() == sum(p["nb_train"] for p in backdoor)
    assert flagged[ctx.is_poison].mean() > 0.8  # TPR
    assert not flagged[~ctx.is_poison].any()  # no clean image removed
    assert set(np.flatnonzero(flagged)) <= set(np.flatnonzero(ctx.y_train == 7))
    # the same run under the earlier rules
    pc = report["per_class"]
    assert all(1 + pc[c]["nb_translated_clusters"] <= 2 for c in range(10))  # "translated" misses it
    assert pc[7]["nb_clusters_all"] > 2  # Algorithm 1's literal count sees it
    # evaluate_defence scores the same marking
    confusion = json.loads(defence.evaluate_defence((~ctx.is_poison).astype(int)))["class_7"]
    assert confusion["TruePositive"]["numerator"] == int((flagged & ctx.is_poison).sum())
    assert confusion["FalsePositive"]["numerator"] == 0


def test_translations_merged_into_the_poisoned_cluster_do_not_hide_it(scenario_ctx):
    # on one benchmark model (distributed 5%, seed 3) mean-shift put all 200 translations toward the target class into
    # the 200 poisoned images' cluster, so no cluster was translated-majority and a count of translated-majority
    # clusters gave class 7 two clusters: missed. The translations are one population by construction and count as one
    # either way. Reproduced here by merging the 100 translations into class 7's largest training sub-cluster (its
    # 200 poisoned images: training-majority, as in the benchmark's model).
    ctx = scenario_ctx(DISTRIBUTED_ROBUST)
    defence = AEGISDefence(ctx.classifier, ctx.x_train, ctx.y_train, nb_seeds=100)
    cluster, calls = defence._cluster, []

    def merged(emb):
        labels, bw = cluster(emb)
        calls.append(len(calls))
        if len(calls) == 8:  # class 7: its training images first, then its 100 translations
            n_train = len(emb) - 100
            values, counts = np.unique(labels[:n_train], return_counts=True)
            assert len(values) >= 2, "class 7's poisoned images must form a training sub-cluster for this test"
            labels = labels.copy()
            labels[n_train:] = values[np.argsort(-counts)[1]]
        return labels, bw

    defence._cluster = merged
    report, is_clean = defence.detect_poison()
    pc = report["per_class"][7]
    assert pc["nb_translated"] == 100 and pc["nb_translated_clusters"] == 0 and pc["nb_backdoor_subpopulations"] >= 1
    assert report["detected"] and report["target_class"] == 7 and report["suspected_classes"] == [7]
    flagged = np.asarray(is_clean) == 0
    assert flagged[ctx.is_poison].mean() > 0.8
    assert not flagged[~ctx.is_poison].any()


def test_harness_details_compare_every_rule_from_one_run(scenario_ctx):
    """The ``aegis`` row's details (what benchmarks/aegis.py renders): every rule's outcome from the same run, JSON-safe."""
    from art_backdoor_ext.metrics import to_json_safe
    from art_backdoor_ext.registry.aegis import RULES, _details

    ctx = scenario_ctx(DISTRIBUTED_ROBUST)
    defence, report, is_clean = _run(ctx, "distributed", cluster_rule="masking")
    details = to_json_safe(_details(defence, report, ctx))
    rules = details["rules"]
    assert set(rules) == set(RULES)
    masking = rules["masking"]  # the default rule: the defence's own verdict and marking
    flagged = np.asarray(is_clean) == 0
    assert masking["detected"] and masking["target_class"] == 7 and masking["target_right"]
    assert masking["nb_flagged"] == int(flagged.sum())
    assert masking["tpr"] == pytest.approx(flagged[ctx.is_poison].mean())
    # Algorithm 1's literal count sees the backdoor too, but it is not the defence's rule: which class it ranks first
    # depends on the trained model (another class's clean splits can outnumber class 7's; CI's 2-thread model did)
    assert not rules["translated"]["detected"] and 7 in rules["all"]["suspected_classes"]
    assert details["nb_poison"] == int(ctx.is_poison.sum())
    assert sum(p["nb_poison"] for subs in details["subpopulations"].values() for p in subs if p["backdoor"]) \
        == int((flagged & ctx.is_poison).sum())
    assert all(0 <= p["knn_translated"] <= 1 for subs in details["subpopulations"].values() for p in subs)


def test_keras_robust_backdoor_detected_thanks_to_the_random_start(scenario_ctx):
    # the same scenario on Keras (issue 19): every first-layer bias of this robust model is negative, so the gradient is
    # exactly zero on MNIST's black border, the trigger's corners included; PGD started at the seed image (the paper,
    # init_noise=0) cannot paint the trigger, the default random start can, and the masking test then finds it
    from dataclasses import replace

    ctx = scenario_ctx(replace(DISTRIBUTED_ROBUST, framework="keras"))
    assert ctx.asr > 0.9 and ctx.clean_accuracy > 0.9
    defence, report, is_clean = _run(ctx, "distributed-keras", cluster_rule="masking")  # every training image
    assert report["detected"] and report["suspected_classes"] == [7]
    flagged = np.asarray(is_clean) == 0
    assert flagged[ctx.is_poison].mean() > 0.8 and not flagged[~ctx.is_poison].any()  # measured 1.00 and none

    def corner(translated):  # bottom-right 2x2 square of the distributed trigger, NHWC
        return float(np.mean(translated[:, 25:27, 25:27, 0].mean(axis=(1, 2)) > 0.5))

    assert corner(defence.translated_[7]) > 0.5
    paper_start = AEGISDefence(ctx.classifier, ctx.x_train, ctx.y_train, init_noise=0.0, **FAST)
    x_trans, targets = paper_start.translate()
    assert corner(x_trans[targets == 7]) < 0.1


def test_clean_robust_model_is_not_flagged(scenario_ctx):
    # the paper's Table 11: every class of a clean robust model has exactly two clusters (training, translated)
    ctx = scenario_ctx(CLEAN_ROBUST)
    assert ctx.clean_accuracy > 0.9
    _, report, is_clean = _run(ctx, "clean")
    assert report["translation_success"] > 0.9
    assert not report["detected"], f"false positive classes {report['suspected_classes']}: {report['nb_clusters']}"
    assert report["target_class"] is None and sum(is_clean) == len(is_clean)


@pytest.mark.slow
def test_plots(scenario_ctx):
    import matplotlib

    matplotlib.use("Agg")
    from art_backdoor_ext.plotting import plot_cluster_exemplars, plot_clusters

    defence, _, _ = _run(scenario_ctx(LOCALISED_ROBUST), "localised")
    for cls in (7, 0):
        fig = plot_clusters(defence, cls)
        plotted = sum(len(c.get_offsets()) for ax in fig.axes for c in ax.collections)
        assert plotted == len(defence.embeddings_[cls])  # every training and translated point is drawn
    fig = plot_cluster_exemplars(defence, 7)
    shown = [im.get_array() for ax in fig.axes for im in ax.get_images()]
    assert shown and all(a.shape[:2] == (28, 28) for a in shown)
    assert len(defence.plot_clusters(0).axes) >= 1
    with pytest.raises(ValueError):
        plot_clusters({"no": "embedding"}, 7)


def test_warns_when_pgd_flips_most_predictions(scenario_ctx):
    # the warning mechanism; note that at eps 1.0 (the default) a standard and an L2-robust compact CNN on mnist-5k
    # flip alike (~20%), so the check only catches clearly non-robust models
    ctx = scenario_ctx(CLEAN)
    defence = AEGISDefence(ctx.classifier, ctx.x_train, ctx.y_train, nb_seeds=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flip = defence.check_robustness(nb_images=50, eps=3.0)
    assert flip > 0.5
    assert any("robust" in str(w.message) for w in caught)


@pytest.mark.parametrize("bad", [dict(nb_seeds=1), dict(eps=0), dict(eps_step=-1), dict(max_iter=0),
                                 dict(perplexity=0), dict(bandwidth=-1.0), dict(cluster_threshold=0),
                                 dict(bandwidth_quantile=1.5), dict(tsne_iter=10), dict(layer="nope"),
                                 dict(pca_components=-3), dict(max_train_per_class=1), dict(cluster_rule="most"),
                                 dict(mask_fraction=0), dict(mask_fraction=1.0), dict(mask_flip_threshold=1.5),
                                 dict(min_subpopulation=0), dict(init_noise=-0.1), dict(init_noise=2.0)])
def test_bad_params(mnist5k, bad):
    from art_backdoor_ext.models import make_classifier

    (x, y), _ = mnist5k
    clf = make_classifier("pytorch", x_train=x[:20], y_train=y[:20], nb_epochs=0)
    with pytest.raises(ValueError):
        AEGISDefence(clf, x[:50], y[:50], **bad)
