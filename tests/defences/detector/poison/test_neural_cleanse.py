"""Neural Cleanse for both frameworks: a BadNets corner trigger is found with the right target (PyTorch and Keras),
the same data's clean model is not flagged, the reversed trigger sits in the corner, unlearning lowers the ASR, and
bad input raises a clear error."""
from __future__ import annotations

import numpy as np
import pytest

from art_backdoor_ext.defences.detector.poison import NeuralCleanseDefence
from art_backdoor_ext.evaluation import Scenario
from art_backdoor_ext.metrics import filtering_rates

BADNETS = Scenario(attack="badnets", fraction=0.05, nb_epochs=10)  # shared with tests/evaluation/test_runner.py
CLEAN = Scenario(attack=None, nb_epochs=10)
BADNETS_KERAS = Scenario(attack="badnets", fraction=0.05, nb_epochs=5, framework="keras")


@pytest.fixture(scope="module")
def badnets_run(scenario_ctx):
    ctx = scenario_ctx(BADNETS)
    defence = NeuralCleanseDefence(ctx.classifier, ctx.x_train, ctx.y_train)
    report, is_clean = defence.detect_poison()
    return ctx, defence, report, np.asarray(is_clean)


def test_finds_the_badnets_target_and_its_corner_trigger(badnets_run):
    ctx, _, report, is_clean = badnets_run
    assert ctx.asr > 0.9
    assert report["detected"] and report["target_class"] == 7
    assert report["anomaly_index"][7] == min(report["anomaly_index"].values()) < -2
    mask = report["masks"][7]
    assert mask[22:, 22:].sum() > 0.5 * mask.sum()  # the 3x3 square sits at the bottom-right corner
    rates = filtering_rates(is_clean, ctx.is_poison, ctx.y_train, ctx.target)
    assert rates.tpr >= 0.75 and rates.fpr_target <= 0.1, rates  # measured 0.80 and 0.05
    assert set(np.flatnonzero(is_clean == 0)) <= set(np.flatnonzero(ctx.y_train == 7))


def test_unlearning_removes_the_backdoor(badnets_run):
    ctx, defence, _, _ = badnets_run
    repaired = defence.mitigate(ctx.x_clean[:800], ctx.y_clean[:800])
    assert ctx.asr_of(repaired) < 0.3
    from art_backdoor_ext.metrics import accuracy

    assert accuracy(repaired, ctx.x_test, ctx.y_test) > ctx.clean_accuracy - 0.05


def test_clean_model_is_not_flagged(scenario_ctx):
    ctx = scenario_ctx(CLEAN)
    report, is_clean = NeuralCleanseDefence(ctx.classifier, ctx.x_train, ctx.y_train).detect_poison()
    assert not report["detected"], report["anomaly_index"]
    assert sum(is_clean) == len(is_clean)


def test_keras_badnets_target(scenario_ctx):
    ctx = scenario_ctx(BADNETS_KERAS)
    assert ctx.asr > 0.9
    report, _ = NeuralCleanseDefence(ctx.classifier, ctx.x_train, ctx.y_train).detect_poison()
    norms = report["l1_norms"]
    assert min(norms, key=norms.get) == 7 and min(report["anomaly_index"], key=report["anomaly_index"].get) == 7
    assert norms[7] < 0.3 * np.median(list(norms.values()))  # measured 18 against a median of ~90
    mask = report["masks"][7]
    assert mask.shape == (28, 28) and mask[22:, 22:].sum() > 0.5 * mask.sum()
    if not report["detected"]:
        # measured: the clean labels' norms split in two groups (~65 and ~125), the MAD is wide and the trigger's
        # anomaly index is -1.6 (-1.5 with 100 epochs), short of the paper's 2; the PyTorch model's is -4.6
        pytest.xfail(f"MAD rule misses the Keras trigger: anomaly index {report['anomaly_index'][7]:.2f}")


BADNETS_KERAS_10 = Scenario(attack="badnets", fraction=0.05, nb_epochs=10, framework="keras")
CLEAN_KERAS_10 = Scenario(attack=None, nb_epochs=10, framework="keras")


def test_keras_detects_badnets_and_passes_the_clean_model(scenario_ctx):
    # the grid's Keras models (art_baselines_mnist5k.md, seed 0, 10 epochs): the MAD rule flags the target
    # (measured anomaly index -2.56) and not the same data's clean model (lowest index -1.63); over 5 seeds 4/5 and
    # 2 false alarms out of 5, like ART's own NeuralCleanse on the same models
    ctx = scenario_ctx(BADNETS_KERAS_10)
    assert ctx.asr > 0.9
    report, is_clean = NeuralCleanseDefence(ctx.classifier, ctx.x_train, ctx.y_train).detect_poison()
    assert report["detected"] and report["target_class"] == 7, report["anomaly_index"]
    rates = filtering_rates(np.asarray(is_clean), ctx.is_poison, ctx.y_train, ctx.target)
    assert rates.tpr > 0.5 and rates.fpr < 0.01, rates
    clean = scenario_ctx(CLEAN_KERAS_10)
    report, is_clean = NeuralCleanseDefence(clean.classifier, clean.x_train, clean.y_train).detect_poison()
    assert not report["detected"] and sum(is_clean) == len(is_clean), report["anomaly_index"]


def test_bad_input(badnets_run):
    ctx, defence, _, _ = badnets_run
    for bad in (dict(init_cost=0), dict(attack_success_threshold=1.5), dict(nb_epochs=0), dict(layer=3),
                dict(neuron_ratio=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            NeuralCleanseDefence(ctx.classifier, ctx.x_train, ctx.y_train, **bad)
    with pytest.raises(ValueError, match="target"):
        defence.mitigate(ctx.x_clean[:100], ctx.y_clean[:100], target=12)


def test_art_neural_cleanse_row_on_keras(scenario_ctx):
    # ART's own NeuralCleanse through the harness ("nc-art"): with its learning rate restored after ART's reset() it
    # reverses the same trigger (smallest mask on the target); as installed under Keras 3 it optimises nothing
    from art_backdoor_ext.evaluation import run_defences

    ctx = scenario_ctx(BADNETS_KERAS)
    (row,) = run_defences(ctx, ["nc-art"])
    norms = row.report["l1_norms"]
    assert min(norms, key=norms.get) == 7 and norms[7] < 0.5 * np.median(list(norms.values())), norms
    assert row.report["detected"] is False or row.report["target_class"] == 7
    assert np.all(row.is_clean == 1) and "restored" in row.notes
    (raw,) = run_defences(ctx, ["nc-art"], defence_kwargs={"nc-art": {"nb_epochs": 2, "restore_learning_rate": False}})
    assert not raw.report["detected"] and len(set(raw.report["l1_norms"].values())) == 1 and "nothing" in raw.notes


def test_art_neural_cleanse_row_refuses_pytorch(badnets_run):
    from art_backdoor_ext.evaluation import run_defences

    with pytest.raises(ValueError, match="only Keras"):
        run_defences(badnets_run[0], ["nc-art"])
    with pytest.raises(ValueError, match="norm"):
        run_defences(badnets_run[0], ["nc-art"], defence_kwargs={"nc-art": {"norm": 3}})
