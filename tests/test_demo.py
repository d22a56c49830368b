"""
``make demo`` (``benchmarks/demo.py``): the summary's verdicts and caveats, on hand-made rows (no training).
"""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

from art_backdoor_ext.evaluation import DefenceResult, Scenario, ScenarioResult

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "demo.py")


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("benchmarks_demo", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _result(rows, attack="badnets", asr=0.99):
    sc = Scenario(attack=attack, target=7, fraction=0.05 if attack else None)
    return ScenarioResult(sc, 0.96, asr if attack else float("nan"), 10.0, rows)


def test_detector_verdicts(demo):
    right = DefenceResult("ac", True, 7, tpr=0.99, fpr_target=0.0, fpr=0.0)
    wrong = DefenceResult("ci", True, 1, tpr=0.0, fpr_target=0.0, fpr=0.01)
    missed = DefenceResult("ac", False, None, tpr=0.0, fpr_target=0.0, fpr=0.0)
    res = _result([right, wrong, missed])
    assert demo.judge(right, res, "patch") == ("caught 7 (0.99/0.00)", [])
    cell, caveats = demo.judge(wrong, res, "patch")
    assert cell == "wrong class 1°" and "the attack's target is 7" in caveats[0]  # CI is for blur-fragile triggers
    assert demo.judge(missed, res, "patch") == ("missed", [])
    clean = _result([DefenceResult("re", True, 3, fpr=0.01)], attack=None)
    assert demo.judge(clean.rows[0], clean, "clean")[0] == "false alarm (3)"


def test_misleading_re_cleansing_is_flagged(demo):
    """RE that names the target but removes half the clean target class, with its own warning, gets caveats."""
    row = DefenceResult("re-paper", True, 7, tpr=0.05, fpr_target=0.46, fpr=0.05,
                        report={"cleansing_reliable": False, "cleansing_notes": "near a decision boundary"},
                        extra={"warnings": ["RE cleansing unreliable: near a decision boundary."]})
    cell, caveats = demo.judge(row, _result([row]), "patch")
    assert cell == "caught 7 (0.05/0.05)°"
    text = " ".join(caveats)
    assert "only 5% of the poison" in text and "46% of the clean images of class 7" in text
    assert "RE cleansing unreliable" in text and text.count("cleansing unreliable") == 1  # the warning, once
    dismissed = DefenceResult("re", False, None, tpr=0.0, fpr_target=0.0, fpr=0.0,
                              report={"dismissed_classes": [7], "norm_ratios": {7: 0.45}, "max_norm_ratio": 0.3})
    cell, caveats = demo.judge(dismissed, _result([dismissed]), "patch")
    assert cell == "missed°" and "dismissed by the effect-size rule" in caveats[0] and "0.45" in caveats[0]


def test_filters_and_transformers(demo):
    ss = DefenceResult("ss", None, None, tpr=0.73, fpr_target=0.38, fpr=0.49)
    strip = DefenceResult("strip", None, None, tpr=0.89, fpr_target=0.0, fpr=0.02)
    fp = DefenceResult("fine-pruning", None, None, clean_accuracy=0.94, asr=0.98)
    res = _result([ss, strip, fp], asr=0.997)
    cell, caveats = demo.judge(ss, res, "patch")
    assert cell == "partial (0.73/0.49)" and "38% of the clean images of class 7" in caveats[0] \
        and "49% of all clean" in caveats[0]
    assert demo.judge(strip, res, "patch") == ("caught (0.89/0.02)", [])
    assert demo.judge(fp, res, "patch") == ("missed (ASR 1.00->0.98)", [])
    fixed = DefenceResult("fine-pruning", None, None, clean_accuracy=0.85, asr=0.05)
    cell, caveats = demo.judge(fixed, res, "patch")
    assert cell == "removed (ASR 1.00->0.05)" and "clean accuracy fell" in caveats[0]
    clean = _result([DefenceResult("ss", None, None, fpr=0.07)], attack=None)
    assert demo.judge(clean.rows[0], clean, "clean")[0] == "false alarm (FPR 0.07)"


def test_summary_matrix(demo):
    scenarios = [demo.SCENARIOS["badnets"], demo.SCENARIOS["clean"]]
    results = [_result([DefenceResult("ac", True, 7, tpr=0.99, fpr_target=0.0, fpr=0.0),
                        DefenceResult("re", True, 7, tpr=0.05, fpr_target=0.46, fpr=0.05)]),
               _result([DefenceResult("ac", False, None, fpr=0.0)], attack=None)]
    for res, sc in zip(results, scenarios):
        for row in res.rows:
            row.extra["verdict"], row.extra["caveats"] = demo.judge(row, res, sc.kind)
    text = demo.format_summary(results, scenarios)
    lines = text.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 118 and len(lines) < 40
    ac_line = next(line for line in lines if line.startswith("ac (ART)"))
    assert "caught 7 (0.99/0.00)" in ac_line and ac_line.rstrip().endswith("ok")
    re_line = next(line for line in lines if line.startswith("re "))
    assert "°[1][2]" in re_line and re_line.rstrip().endswith("-")  # no RE row on the clean scenario
    assert any(line.startswith("[2] re on badnets: removes 46%") for line in lines)
    assert "re = small additive patterns" in text


def test_cli_rejects_unknown_names_before_training(demo):
    with pytest.raises(SystemExit):
        demo.main(["--scenarios", "nope"])
    with pytest.raises(ValueError, match="Unknown defence"):
        demo.main(["--defences", "nope", "--out", os.devnull])
    assert np.isfinite(demo.CAUGHT_TPR)
