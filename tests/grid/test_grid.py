"""
The experiment grid on a tiny grid (digits, one epoch, 2 seeds, a clean and a poisoned entry, AC and SS): it runs,
resumes after an interruption computing only what is missing, rejects tampered cache entries, keys every setting, fails
on a bad spec before training, and its statistics match hand-computed references.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from art_backdoor_ext.evaluation.api import Scenario
from art_backdoor_ext.grid import (GridCache, aggregate, bootstrap_ci, content_key, format_framework_table,
                                   format_grid_table, load_spec, rate_ci, run_grid, threshold_free_scores,
                                   wilson_interval)
from art_backdoor_ext.grid import cache as cache_module
from art_backdoor_ext.grid import tasks as grid_tasks
from art_backdoor_ext.grid.spec import GridTask

SPEC = {
    "name": "tiny",
    "dataset": "digits",
    "nb_epochs": 1,
    "seeds": [0, 1],
    "attacks": [{"attack": "clean"},
                {"attack": "localised", "target": 1, "sources": [2, 3], "n_per_source": 40}],
    "defences": {"ac": {}, "ss": {}},
}
NB_TASKS = 8  # 2 entries x 2 seeds x 2 defences


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The tiny grid run from an empty cache: ``(cache folder, result)``."""
    folder = str(tmp_path_factory.mktemp("grid-cache"))
    return folder, run_grid(SPEC, cache=folder, verbose=False, plot=False)


def _work(result):
    return {k: v for k, v in result.counts.items() if v}


def test_grid_runs_on_local(full):
    _, result = full
    assert _work(result) == {"trained": 4, "poisoned": 2, "defence": NB_TASKS}
    assert all(p is not None for p in result.payloads) and len(result.cells) == 4
    cells = {c["cell"]: c for c in result.cells}
    clean_ac = cells["digits/clean/pytorch-compact/e1b64 | ac"]
    assert clean_ac["seeds"] == [0, 1] and "false_alarm_rate" in clean_ac and clean_ac["false_alarm_rate"]["n"] == 2
    poisoned_ss = cells["digits/localised/pytorch-compact/e1b64 | ss"]
    assert poisoned_ss["metrics"]["tpr"]["n"] == 2 and "detection_rate" in poisoned_ss
    assert all(p["nb_poison"] == 80 for p in result.payloads if p["poisoned"])
    table = result.table()
    assert table.count("\n") == 1 + len(result.cells) and "digits/localised" in table
    # SS scores every training image (its per-class spectral percentile): threshold-free metrics on the poisoned entry
    auroc = poisoned_ss["metrics"]["auroc"]
    assert auroc["n"] == 2 and 0.0 <= auroc["mean"] <= 1.0
    assert all(p["scores"] is None for p in result.payloads if p["row"]["defence"] == "ac")


def test_rerun_takes_everything_from_the_cache(full):
    folder, first = full
    again = run_grid(SPEC, cache=folder, verbose=False, plot=False)
    assert _work(again) == {"defence_hit": NB_TASKS}
    assert again.table() == first.table()


def test_cached_only_reports_a_partial_grid_without_computing(full):
    folder, first = full
    more = {**SPEC, "seeds": [0, 1, 2]}
    partial = run_grid(more, cache=folder, verbose=False, plot=False, cached_only=True)
    assert _work(partial) == {"defence_hit": NB_TASKS}  # nothing trained, poisoned or computed
    assert sum(p is None for p in partial.payloads) == len(partial.payloads) - NB_TASKS
    assert partial.table() == first.table()  # the missing seed is left out of every cell
    with pytest.raises(ValueError, match="cached_only"):
        run_grid(more, cache=folder, verbose=False, plot=False, cached_only=True, force=True)


def test_interrupted_grid_resumes_with_only_the_missing_tasks(full, tmp_path, monkeypatch):
    calls = []
    real = grid_tasks.run_defences

    def interrupted(*args, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt  # the run is killed while the 6th defence runs
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(grid_tasks, "run_defences", interrupted)
    folder = str(tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        run_grid(SPEC, cache=folder, verbose=False, plot=False)
    assert len(os.listdir(os.path.join(folder, "results"))) == 5
    assert not [f for sub in ("results", "models", "poisoned") for f in os.listdir(os.path.join(folder, sub))
                if f.startswith(".tmp-")]
    monkeypatch.setattr(grid_tasks, "run_defences", real)
    resumed = run_grid(SPEC, cache=folder, verbose=False, plot=False)
    # done: clean seeds 0 and 1 (both defences), localised seed 0 (AC); missing: localised seed 0 (SS, on the stored
    # model) and localised seed 1 (both, a new model)
    assert _work(resumed) == {"defence_hit": 5, "defence": 3, "trained_hit": 1, "trained": 1, "poisoned_hit": 1,
                              "poisoned": 1}
    assert resumed.table() == full[1].table()  # a model loaded from the cache gives the same results


def _entry_paths(folder, task: GridTask):
    cache = GridCache(folder)
    sc = task.scenario
    key = cache.result_key(sc, task.defence, task.defence_kwargs, task.retrain)
    poison_key = content_key("poisoned", cache_module.poison_settings(sc))
    return (os.path.join(folder, "results", key + ".json"),
            os.path.join(folder, "models", cache.model_key(sc) + ".pt"),
            os.path.join(folder, "poisoned", poison_key + ".npz"))


def test_tampered_or_corrupted_entries_are_recomputed(full, tmp_path):
    source, first = full
    folder = str(tmp_path / "cache")
    shutil.copytree(source, folder)
    task = first.tasks[-2]  # localised, seed 1, AC
    assert task.scenario.seed == 1 and task.defence == "ac" and task.scenario.poisoned
    result_path, model_path, data_path = _entry_paths(folder, task)
    with open(result_path, encoding="utf-8") as f:
        record = json.load(f)
    record["payload"]["row"]["tpr"] = 1.0  # a "better" number, checksum left as it was
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(record, f)
    for path in (model_path, data_path):  # flip bytes in the middle of the weights and of the arrays
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.warns(UserWarning, match="failed its check") as caught:
        again = run_grid(SPEC, cache=folder, verbose=False, plot=False)
    assert len([w for w in caught if "failed its check" in str(w.message)]) == 3
    assert _work(again) == {"invalid": 3, "defence_hit": NB_TASKS - 1, "defence": 1, "trained": 1, "poisoned": 1}
    assert again.table() == first.table()
    # an entry whose recorded settings were edited no longer hashes to its key
    with open(result_path, encoding="utf-8") as f:
        record = json.load(f)
    record["settings"]["defence_kwargs"] = {"nb_dims": 3}
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(record, f)
    with pytest.warns(UserWarning, match="do not hash to its key"):
        assert GridCache(folder).get_result(task.scenario, task.defence, task.defence_kwargs, task.retrain) is None


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path):
    path = str(tmp_path / "entry.json")

    def half_written(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write('{"half": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache_module._atomic_write(path, half_written)  # pylint: disable=protected-access
    assert os.listdir(tmp_path) == []


def test_force_recomputes(full, tmp_path):
    folder = str(tmp_path / "cache")
    shutil.copytree(full[0], folder)
    cache = GridCache(folder, force=True)
    task = full[1].tasks[0]
    assert cache.get_result(task.scenario, task.defence, task.defence_kwargs, task.retrain) is None
    assert GridCache(folder).get_result(task.scenario, task.defence, task.defence_kwargs, task.retrain) is not None


def test_cache_key_changes_with_every_setting(monkeypatch):
    base = Scenario(dataset="digits", attack="localised", target=1, sources=[2, 3], n_per_source=40, nb_epochs=1)
    cache = GridCache.__new__(GridCache)  # keys need no folder
    changes = {"dataset": "mnist-5k", "attack": "badnets", "target": 2, "sources": [2], "n_per_source": 30,
               "fraction": 0.05, "framework": "keras", "width": "wide", "nb_epochs": 2, "batch_size": 32,
               "robust": True, "robust_kwargs": {"eps": 0.3}, "attack_kwargs": {"size": 2}, "seed": 1}
    assert set(changes) == {f.name for f in dataclasses.fields(Scenario)}
    model_keys = {cache.model_key(base)}
    poison_key = content_key("poisoned", cache_module.poison_settings(base))
    for field, value in changes.items():
        changed = dataclasses.replace(base, **{field: value})
        model_keys.add(cache.model_key(changed))
        same_data = content_key("poisoned", cache_module.poison_settings(changed)) == poison_key
        # the poisoned set is shared by every model trained on it, and by nothing else
        assert same_data == (field in ("width", "nb_epochs", "batch_size", "robust", "robust_kwargs")), field
    assert len(model_keys) == 1 + len(changes)
    results = {cache.result_key(base, "ac", {}, False), cache.result_key(base, "ss", {}, False),
               cache.result_key(base, "ac", {"nb_dims": 5}, False), cache.result_key(base, "ac", {}, True)}
    assert len(results) == 4
    assert cache.result_key(base, "ac", {"a": 1, "b": 2}, False) == cache.result_key(base, "ac", {"b": 2, "a": 1},
                                                                                      False)
    before = cache.model_key(base)
    monkeypatch.setattr("art_backdoor_ext.__version__", "9.9.9")
    assert cache.model_key(base) != before


@pytest.mark.parametrize("change, message", [
    ({"attacks": [{"attack": "clean"}, {"attack": "nope"}]}, r"attacks\[1\].*Unknown attack 'nope'"),
    ({"defences": {"ac": {}, "nope": {}}}, r"defences\.nope.*Unknown defence 'nope'"),
    ({"defences": {"ac": {"size_treshold": 0.3}}}, r"defences\.ac.*size_treshold"),
    ({"seeds": []}, r"'seeds'"),
    ({"attacks": [{"attack": "badnets", "fraction": 1.5}]}, r"attacks\[0\].*fraction"),
    ({"attacks": [{"attack": "badnets", "fractoin": 0.1}]}, r"attacks\[0\].*fractoin"),
    ({"dataset": ["digits", "imagenet"]}, r"'dataset'.*imagenet"),
    ({"nb_epochs": -1}, r"'nb_epochs'"),
    ({"width": "huge"}, r"'width'"),
    ({"epochs": 3}, r"Unknown grid spec field.*epochs"),
])
def test_bad_spec_fails_before_training(change, message, monkeypatch, tmp_path):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the bad spec was reported")

    monkeypatch.setattr(grid_tasks, "prepare_scenario", no_work)
    monkeypatch.setattr("art_backdoor_ext.evaluation.api.ScenarioContext.train_model", no_work)
    with pytest.raises(ValueError, match=message):
        run_grid({**SPEC, **change}, cache=str(tmp_path), verbose=False, plot=False)


def test_yaml_spec_and_cli(full, tmp_path, capsys):
    from art_backdoor_ext.grid.__main__ import main

    import yaml

    spec_path = str(tmp_path / "tiny.yaml")
    with open(spec_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(SPEC, f)
    assert load_spec(spec_path).as_dict() == load_spec(SPEC).as_dict()
    out = str(tmp_path / "out" / "tiny")
    assert main([spec_path, "--cache", full[0], "--out", out, "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == full[1].table()
    for suffix in (".md", ".json", ".png"):
        assert os.path.getsize(out + suffix) > 0
    data = json.load(open(out + ".json", encoding="utf-8"))
    assert len(data["cells"]) == 4 and len(data["tasks"]) == NB_TASKS
    with open(spec_path, "w", encoding="utf-8") as f:
        yaml.safe_dump({**SPEC, "seeds": []}, f)
    with pytest.raises(SystemExit) as exc:
        main([spec_path, "--cache", full[0], "--quiet"])
    assert exc.value.code == 2 and "seeds" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------ statistics
@pytest.mark.parametrize("k, n, low, high", [  # reference values of the 95% Wilson score interval
    (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (5, 10, 0.2366, 0.7634), (8, 10, 0.4902, 0.9433),
    (1, 2, 0.0945, 0.9055)])
def test_wilson_interval_matches_references(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_by_hand():
    k, n, z = 3, 7, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half))
    assert np.isnan(wilson_interval(0, 0)).all()
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)
    assert rate_ci([True, False, None, True]) == pytest.approx(
        {"k": 2, "n": 3, "rate": 2 / 3, "low": wilson_interval(2, 3)[0], "high": wilson_interval(2, 3)[1]})


def test_bootstrap_ci_against_a_hand_bootstrap():
    values = np.array([0.61, 0.72, 0.55, 0.80, 0.67, 0.70, 0.59, 0.75])
    rng = np.random.default_rng(1)
    means = values[rng.integers(0, len(values), (20000, len(values)))].mean(axis=1)
    hand = np.percentile(means, [2.5, 97.5])
    low, high = bootstrap_ci(values, n_resamples=20000)
    assert (low, high) == pytest.approx(tuple(hand), abs=0.01)
    assert bootstrap_ci(values) == bootstrap_ci(values)  # seeded locally: reproducible
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert np.isnan(bootstrap_ci([0.5])).all() and np.isnan(bootstrap_ci([0.5, float("nan")])).all()


def test_threshold_free_scores_by_hand():
    # positives score 2 and 4, negatives 1 and 3: 3 of the 4 (positive, negative) pairs are ordered -> AUROC 0.75;
    # at FPR 0 only the top score (a positive) is flagged -> TPR 0.5
    scores = threshold_free_scores([1.0, 2.0, 3.0, 4.0], [False, True, False, True])
    assert scores == pytest.approx({"auroc": 0.75, "tpr_at_1pct_fpr": 0.5, "tpr_at_5pct_fpr": 0.5})
    assert threshold_free_scores([0.1, 0.2], [False, False]) is None
    rng = np.random.default_rng(0)
    is_poison = np.arange(1000) < 50
    perfect = threshold_free_scores(rng.random(1000) + 2 * is_poison, is_poison)
    assert perfect == pytest.approx({"auroc": 1.0, "tpr_at_1pct_fpr": 1.0, "tpr_at_5pct_fpr": 1.0})


def test_aggregate_detection_and_false_alarm_rates():
    grid = load_spec({**SPEC, "seeds": 4})
    tasks = [t for t in grid.tasks() if t.defence == "ac"]

    def payload(task, detected, tpr):
        return {"seed": task.scenario.seed, "poisoned": task.scenario.poisoned, "target": 1, "clean_accuracy": 0.9,
                "asr": 0.95 if task.scenario.poisoned else float("nan"), "train_seconds": 1.0,
                "row": {"detected": detected, "target_class": 1 if detected else None, "tpr": tpr, "fpr": 0.1,
                        "fpr_target": 0.2, "seconds": 0.5, "clean_accuracy": float("nan"), "asr": float("nan")},
                "scores": {"auroc": 0.9, "tpr_at_1pct_fpr": 0.4, "tpr_at_5pct_fpr": 0.6}}

    detected = [True, False, False, False, True, True, True, False]
    payloads = [payload(t, d, 0.5 + 0.1 * i if t.scenario.poisoned else float("nan"))
                for i, (t, d) in enumerate(zip(tasks, detected))]
    clean, poisoned = aggregate(tasks, payloads)
    assert clean["false_alarm_rate"]["k"] == 1 and clean["false_alarm_rate"]["n"] == 4
    assert (clean["false_alarm_rate"]["low"], clean["false_alarm_rate"]["high"]) == wilson_interval(1, 4)
    assert poisoned["detection_rate"]["k"] == 3 and poisoned["target_found_rate"]["k"] == 3
    assert poisoned["metrics"]["tpr"]["mean"] == pytest.approx(np.mean([0.9, 1.0, 1.1, 1.2]))
    assert "tpr" not in clean["metrics"] and clean["metrics"]["auroc"]["mean"] == pytest.approx(0.9)
    table = format_grid_table([clean, poisoned])
    assert "false alarm 1/4" in table and "detected 3/4" in table
    # the frameworks side by side: one column per framework, nothing for a single framework
    assert format_framework_table([clean, poisoned]) == ""
    keras = [dict(c, framework="keras") for c in (clean, poisoned)]
    side = format_framework_table([clean, poisoned] + keras).splitlines()
    assert side[0].endswith("| pytorch | keras |") and len(side) == 4
    assert "false alarms 1/4" in side[2] and side[3].count("right target 3/4") == 2 and "TPR 1.05" in side[3]


# ------------------------------------------------------------------------------------------------------ ray backend
def test_ray_backend_gives_the_local_tables(full, tmp_path):
    pytest.importorskip("ray")
    source, first = full
    folder = str(tmp_path / "cache")
    shutil.copytree(source, folder)
    shutil.rmtree(os.path.join(folder, "results"))
    for task in first.tasks:  # seed 1's models are trained on the Ray workers, seed 0's loaded there from the cache
        if task.scenario.seed == 1:
            path = _entry_paths(folder, task)[1]
            for p in (path, path[:-len(".pt")] + ".json"):
                if os.path.exists(p):
                    os.remove(p)
    result = run_grid(SPEC, cache=folder, backend="ray", workers=2, verbose=False, plot=False)
    assert _work(result) == {"trained": 2, "trained_hit": 2, "poisoned_hit": 2, "defence": NB_TASKS}
    assert result.table() == first.table()
    assert len(os.listdir(os.path.join(folder, "results"))) == NB_TASKS  # the driver stored every result


def test_backend_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="backend"):
        run_grid(SPEC, cache=str(tmp_path), backend="dask")
    with pytest.raises(ValueError, match="workers"):
        run_grid(SPEC, cache=str(tmp_path), backend="local", workers=4)
    with pytest.raises(ValueError, match="workers"):
        run_grid(SPEC, cache=str(tmp_path), backend="ray", workers=0)


def test_shipped_grid_specs_are_valid():
    folder = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "grids")
    specs = sorted(f for f in os.listdir(folder) if f.endswith(".yaml"))
    assert specs
    for name in specs:
        assert load_spec(os.path.join(folder, name)).tasks()


def test_scenario_results_rebuild_the_harness_rows(full):
    """A benchmark renderer reads the grid back as the harness's ScenarioResults, identical from the cache."""
    folder, first = full
    again = run_grid(SPEC, cache=folder, verbose=False, plot=False)
    pairs = first.scenario_results()
    assert [label for label, _ in pairs] == ["clean", "clean", "localised", "localised"]
    assert [res.scenario.seed for _, res in pairs] == [0, 1, 0, 1]
    for (_, a), (_, b), payloads in zip(pairs, again.scenario_results(), zip(*[iter(first.payloads)] * 2)):
        assert [r.defence for r in a.rows] == ["ac", "ss"]
        assert [r.as_dict() for r in a.rows] == [r.as_dict() for r in b.rows] == [p["row"] for p in payloads]
        assert a.asr == payloads[0]["asr"] or (np.isnan(a.asr) and not a.scenario.poisoned)


def test_defence_details_survive_the_cache(tmp_path):
    """CI's diagnostics (``report["details"]``) reach the row's ``extra`` and come back unchanged from the cache."""
    import matplotlib

    matplotlib.use("Agg")
    from art_backdoor_ext.plotting import plot_impurity

    spec = {**SPEC, "seeds": [0], "attacks": SPEC["attacks"][1:], "nb_epochs": 3, "defences": {"ci": {}}}
    first = run_grid(spec, cache=str(tmp_path), verbose=False, plot=False)
    again = run_grid(spec, cache=str(tmp_path), verbose=False, plot=False)
    assert _work(again) == {"defence_hit": 1}
    (_, res), = first.scenario_results()
    (_, res2), = again.scenario_results()
    d = res.rows[0].extra
    assert d == res2.rows[0].extra
    assert set(d["nb_components"]) == {str(c) for c in range(10)}
    assert 0.0 <= d["flip_poison"] <= 1.0 and len(d["flip_clean_by_class"]) == 10
    assert sum(sum(pc["component_sizes"]) for pc in d["per_class"].values()) == first.payloads[0]["nb_train"]
    fig = plot_impurity(d)  # class keys read back from JSON as strings
    assert fig.axes


def test_one_defence_twice_with_a_label(full):
    """``name@label`` runs a defence again with other settings: its own cells and rows, cached apart, retrainable."""
    folder, first = full
    spec = {**SPEC, "defences": {"ss": {}, "ss@strict": {"expected_pp_poison": 0.1}}, "retrain": ["ss@strict"]}
    result = run_grid(spec, cache=folder, verbose=False, plot=False)
    work = _work(result)
    assert work["defence_hit"] == 4 and work["defence"] == 4 and "trained" not in work  # only ss@strict runs
    tasks = load_spec(spec).tasks()
    strict = [t for t in tasks if t.defence_name == "ss@strict"]
    assert len(strict) == 4 and all(t.defence == "ss" and t.retrain for t in strict)
    assert all(not t.retrain and t.defence_label is None for t in tasks if t.defence_name == "ss")
    cells = {c["cell"]: c for c in result.cells}
    assert cells["digits/clean/pytorch-compact/e1b64 | ss@strict"]["defence"] == "ss@strict"
    # ART's SS removes 1.5 x expected_pp_poison of every class: about 0.5 by default, 0.15 here
    for label in ("clean", "localised"):
        default = cells[f"digits/{label}/pytorch-compact/e1b64 | ss"]["metrics"]["fpr"]["mean"]
        fewer = cells[f"digits/{label}/pytorch-compact/e1b64 | ss@strict"]["metrics"]["fpr"]["mean"]
        assert fewer < 0.25 < 0.4 < default
    for _, res in result.scenario_results():
        assert [r.defence for r in res.rows] == ["ss", "ss@strict"]
        assert np.isnan(res.rows[0].clean_accuracy) and np.isfinite(res.rows[1].clean_accuracy)  # retrained
    for bad, message in (({"ss@": {}}, r"defences\.ss@.*empty"), ({"nope@x": {}}, r"defences\.nope@x.*Unknown")):
        with pytest.raises(ValueError, match=message):
            load_spec({**SPEC, "defences": bad})
