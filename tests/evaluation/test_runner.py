import json

import numpy as np
import pytest

from art_backdoor_ext.evaluation import (Scenario, ScenarioResult, format_table, load_results, run_defences,
                                         run_scenario, save_results)

BADNETS = Scenario(attack="badnets", fraction=0.05, nb_epochs=10)  # the demo's setting


@pytest.fixture(scope="module")
def badnets(scenario_ctx):
    return scenario_ctx(BADNETS)


def test_badnets_takes_and_model_stays_accurate(badnets):
    assert badnets.clean_accuracy > 0.9
    assert badnets.asr > 0.9
    assert badnets.is_poison.sum() == 200 and np.all(badnets.y_train[badnets.is_poison] == 7)


def test_art_baselines_on_the_same_poisoned_data(badnets):
    rows = {r.defence: r for r in run_defences(badnets, ["ac", "ss-oracle"])}
    ac = rows["ac"]
    assert ac.tpr > 0.8  # ART's Activation Clustering finds most poisoned images
    assert ac.detected and ac.target_class == 7
    assert ac.fpr_target < 0.1
    # SS (oracle poison fraction) removes 1.5x that fraction of every class, so it catches most of the poison
    ss = rows["ss-oracle"]
    assert ss.tpr > 0.5 and ss.detected is None
    assert ss.extra["nb_flagged"] == int((ss.is_clean == 0).sum()) > 0
    table = format_table(ScenarioResult(BADNETS, badnets.clean_accuracy, badnets.asr, badnets.train_seconds,
                                        list(rows.values())))
    assert table.count("\n") == 3 and "| ac | yes | 7 |" in table


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
    assert "report" not in data[0]["rows"][0]  # raw reports stay in memory, the JSON holds the table
    assert "digits/localised" in open(md, encoding="utf-8").read()
    (back,) = load_results(js)
    assert back.rows[0].tpr == pytest.approx(res.rows[0].tpr) and back.scenario == res.scenario


def test_bad_names_fail_before_training(digits, monkeypatch):
    from art_backdoor_ext.evaluation import api

    def no_training(*args, **kwargs):
        raise AssertionError("a model was trained before the bad input was reported")

    monkeypatch.setattr(api.ScenarioContext, "train_model", no_training)
    with pytest.raises(ValueError, match="Unknown attack 'nope'.*badnets"):
        run_scenario(Scenario(dataset="digits", attack="nope"), defences=[], data=digits)
    with pytest.raises(ValueError, match="framework"):
        run_scenario(Scenario(dataset="digits", framework="mxnet"), defences=[], data=digits)
    with pytest.raises(ValueError, match="Unknown defence 'nope'"):
        run_scenario(Scenario(dataset="digits", attack="localised"), defences=["ac", "nope"], data=digits)
    with pytest.raises(ValueError, match="size_threshold"):  # a keyword the AC row does not take
        run_scenario(Scenario(dataset="digits", attack="localised"), defences=["ac"], data=digits,
                     defence_kwargs={"ac": {"size_treshold": 0.3}})
    with pytest.raises(ValueError, match="not among the defences run"):
        run_scenario(Scenario(dataset="digits", attack="localised"), defences=["ac"], data=digits,
                     defence_kwargs={"ss": {}})
    with pytest.raises(ValueError, match="fraction"):
        run_scenario(Scenario(dataset="digits", attack="localised", fraction=1.5), defences=[], data=digits)
    with pytest.raises(ValueError, match="value"):  # a keyword the attack factory does not take
        run_scenario(Scenario(dataset="digits", attack="localised", attack_kwargs={"colour": 1}), defences=[],
                     data=digits)


def test_every_registered_attack_works_on_first_use():
    # no registration by side effect: a fresh interpreter can prepare any registered attack without running anything
    import subprocess
    import sys

    code = ("from art_backdoor_ext.evaluation import AttackContext, as_trigger, get_attack\n"
            "from art_backdoor_ext.datasets import load_dataset\n"
            "import numpy as np\n"
            "(x, y), (xt, yt) = load_dataset('digits')\n"
            "ctx = AttackContext(x, y, xt, yt, 10, 1, [2, 3], 'pytorch', 0)\n"
            "for name in ['static', 'chessboard-patch', 'pattern-C', 'isolated-pixels', 'localised', 'badnets']:\n"
            "    trigger = as_trigger(get_attack(name)(ctx), 1, 10)\n"
            "    out = trigger(x[:5].copy())\n"
            "    assert out.shape == x[:5].shape and 0 <= out.min() and out.max() <= 1, name\n"
            "    assert not np.array_equal(out, x[:5]), name\n"
            "    print(name, 'ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count(" ok") == 6


def test_strip_row_flags_triggered_training_images(badnets):
    (row,) = run_defences(badnets, ["strip"])
    assert row.tpr > 0.8 and row.fpr < 0.1


def test_scenario_fields_are_checked_before_training(digits):
    for bad, field in ((dict(seed=-1), "seed"), (dict(width="huge"), "width"), (dict(target=-2), "target"),
                       (dict(batch_size=0), "batch_size"), (dict(nb_epochs=1.5), "nb_epochs"),
                       (dict(n_per_source=0), "n_per_source")):
        with pytest.raises(ValueError, match=f"Scenario.{field}"):
            run_scenario(Scenario(dataset="digits", attack="localised", **bad), defences=[], data=digits)


def test_an_attack_that_trains_the_model(digits):
    # "adversarial-embedding" is registered with trains_model=True: the runner hands it the naive model and the
    # poisoned set, and the defences see the classifier it returns
    from art_backdoor_ext.evaluation import attack_trains_model

    assert attack_trains_model("adversarial-embedding") and not attack_trains_model("badnets")
    sc = Scenario(dataset="digits", attack="adversarial-embedding", target=1, fraction=0.05, nb_epochs=3,
                  attack_kwargs={"nb_epochs": 1, "batch_size": 32})
    res = run_scenario(sc, defences=["ac"], keep_context=True, data=digits)
    info = res.context.attack_info
    assert {"naive_accuracy", "naive_asr", "naive_seconds", "attack_seconds", "history"} <= set(info)
    assert len(info["history"]["ce"]) == 1 and res.train_seconds >= info["attack_seconds"]
    assert 0 <= res.asr <= 1 and res.rows[0].defence == "ac"
    with pytest.raises(ValueError, match="regularization"):
        run_scenario(Scenario(dataset="digits", attack="adversarial-embedding", attack_kwargs={"lam": 1}),
                     defences=[], data=digits)


def test_reference_rows_the_backdoor_and_the_clean_model(digits):
    """``none`` is the scenario's model as trained; ``clean-reference`` a clean model of the same seed, which the
    trigger does not fool."""
    sc = Scenario(dataset="digits", attack="localised", target=1, sources=[2, 3], n_per_source=40, nb_epochs=6)
    res = run_scenario(sc, defences=["none", "clean-reference"], data=digits)
    own, ref = res.rows
    assert own.clean_accuracy == res.clean_accuracy and own.asr == res.asr and own.detected is None
    assert res.asr > 0.8 and ref.asr < 0.2 and ref.clean_accuracy > 0.8
    assert own.extra["nb_poison"] == ref.extra["nb_poison"] == 80 and own.extra["pattern_l2"] is None
    assert own.as_dict()["extra"]["nb_poison"] == 80  # the details survive as_dict (the grid's cache)
