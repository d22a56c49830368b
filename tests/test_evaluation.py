import json

import numpy as np
import pytest

from art_backdoor_ext.evaluation import (ATTACKS, DEFENCES, Scenario, format_table, run_defences, run_scenario,
                                         save_results)

BADNETS = Scenario(attack="badnets", fraction=0.05, nb_epochs=10)  # the demo's setting


@pytest.fixture(scope="module")
def badnets(scenario_ctx):
    return scenario_ctx(BADNETS)


def test_badnets_takes_and_model_stays_accurate(badnets):
    assert badnets.clean_accuracy > 0.9
    assert badnets.asr > 0.9
    assert badnets.is_poison.sum() == 200 and np.all(badnets.y_train[badnets.is_poison] == 7)


def test_art_baselines_on_the_same_poisoned_data(badnets):
    rows = {r.defence: r for r in run_defences(badnets, ["ac", "ss"])}
    ac = rows["ac"]
    assert ac.tpr > 0.8  # ART's Activation Clustering finds most poisoned images
    assert ac.detected and ac.target_class == 7
    assert ac.fpr_target < 0.1
    assert 0 <= rows["ss"].tpr <= 1 and rows["ss"].seconds > 0
    table = format_table(run_scenario.__globals__["ScenarioResult"](BADNETS, badnets.clean_accuracy, badnets.asr,
                                                                   badnets.train_seconds, list(rows.values())))
    assert table.count("\n") == 3 and "| ac |" in table


def test_retrain_after_filtering_removes_the_backdoor(badnets):
    (row,) = run_defences(badnets, ["ac"], retrain=True)
    assert row.asr < 0.2 and row.clean_accuracy > 0.85


def test_run_scenario_and_save(tmp_path, digits):
    res = run_scenario(Scenario(dataset="digits", attack="localised", target=1, sources=[2, 3], n_per_source=40,
                                nb_epochs=6), defences=["ac"], keep_context=True, data=digits)
    assert res.context.is_poison.sum() == 80
    js, md = save_results([res], str(tmp_path / "out"))
    data = json.loads(open(js, encoding="utf-8").read())
    assert data[0]["rows"][0]["defence"] == "ac" and data[0]["scenario"]["target"] == 1
    assert "digits/localised" in open(md, encoding="utf-8").read()


def test_registries_and_bad_names(digits):
    assert {"badnets", "localised", "distributed"} <= set(ATTACKS) and {"ac", "ss"} <= set(DEFENCES)
    with pytest.raises(ValueError, match="Unknown attack"):
        run_scenario(Scenario(dataset="digits", attack="nope"), defences=[], data=digits)
    with pytest.raises(ValueError, match="framework"):
        run_scenario(Scenario(dataset="digits", framework="mxnet"), defences=[], data=digits)


def test_strip_row_flags_triggered_training_images(badnets):
    (row,) = run_defences(badnets, ["strip"])
    assert row.tpr > 0.8 and row.fpr < 0.1
