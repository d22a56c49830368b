"""
The grid's tables: per-task results aggregated into cells (every setting but the seed) with statistics over seeds,
rendered as Markdown and JSON, and an error-bar plot.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from art_backdoor_ext.grid.spec import GridTask, scenario_cell
from art_backdoor_ext.grid.stats import mean_ci, rate_ci

__all__ = ["aggregate", "format_grid_table", "format_framework_table", "save_grid_results", "plot_grid"]

CONTINUOUS = (("clean_accuracy", "acc"), ("asr", "ASR"), ("tpr", "TPR"), ("fpr_target", "FPR (target)"),
              ("fpr", "FPR (all)"), ("acc_after", "acc after"), ("asr_after", "ASR after"))
SCORES = (("auroc", "AUROC"), ("tpr_at_1pct_fpr", "TPR@1%FPR"), ("tpr_at_5pct_fpr", "TPR@5%FPR"))
TIMING = (("seconds", "defence seconds"), ("train_seconds", "train seconds"))


def _values(payload: Dict[str, Any]) -> Dict[str, Optional[float]]:
    row = payload["row"]
    scores = payload.get("scores") or {}
    return {"clean_accuracy": payload["clean_accuracy"], "asr": payload["asr"], "tpr": row.get("tpr"),
            "fpr_target": row.get("fpr_target"), "fpr": row.get("fpr"), "acc_after": row.get("clean_accuracy"),
            "asr_after": row.get("asr"), "seconds": row.get("seconds"), "train_seconds": payload.get("train_seconds"),
            **{k: scores.get(k) for k, _ in SCORES}}


def aggregate(tasks: Sequence[GridTask], payloads: Sequence[Optional[Dict[str, Any]]],
              confidence: float = 0.95) -> List[Dict[str, Any]]:
    """
    One dict per cell (scenario settings but the seed, and defence), in the grid's order: every metric's mean and
    bootstrap CI over seeds (``"metrics"``), and Wilson intervals for the detection rate (poisoned cells) or the
    false-alarm rate (clean cells) and, on poisoned cells, for finding the right target class. Tasks without a payload
    (not run) are left out.
    """
    cells: Dict[str, Dict[str, Any]] = {}
    for task, payload in zip(tasks, payloads):
        if payload is None:
            continue
        sc = task.scenario
        cell = cells.setdefault(task.cell, {
            "cell": task.cell, "scenario": scenario_cell(sc, task.label), "label": task.label,
            "defence": task.defence_name, "defence_kwargs": task.defence_kwargs, "retrain": task.retrain,
            "attack": sc.attack if sc.poisoned else None,
            "dataset": sc.dataset, "framework": sc.framework, "width": sc.width, "robust": sc.robust,
            "nb_epochs": sc.nb_epochs, "batch_size": sc.batch_size, "poisoned": sc.poisoned, "seeds": [], "_rows": []})
        cell["seeds"].append(sc.seed)
        cell["_rows"].append(payload)
    out = []
    for cell in cells.values():
        rows = cell.pop("_rows")
        values = [_values(p) for p in rows]
        metrics = {}
        for name, _ in CONTINUOUS + SCORES + TIMING:
            column = [v[name] for v in values]
            if any(c is not None and np.isfinite(c) for c in column):
                metrics[name] = mean_ci(column, confidence=confidence)
        cell["metrics"] = metrics
        detected = [p["row"].get("detected") for p in rows]
        cell["n"] = len(rows)
        if cell["poisoned"]:
            cell["detection_rate"] = rate_ci(detected, confidence)
            found = [None if d is None else bool(d) and p["row"].get("target_class") == p.get("target")
                     for d, p in zip(detected, rows)]
            cell["target_found_rate"] = rate_ci(found, confidence)
        else:
            cell["false_alarm_rate"] = rate_ci(detected, confidence)
        out.append(cell)
    return out


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _mean_cell(stat: Optional[Dict[str, Any]]) -> str:
    if not stat or not np.isfinite(stat["mean"]):
        return "-"
    if not np.isfinite(stat["low"]):
        return _fmt(stat["mean"])
    return f"{_fmt(stat['mean'])} [{_fmt(stat['low'])}, {_fmt(stat['high'])}]"


def _rate_cell(stat: Optional[Dict[str, Any]]) -> str:
    if not stat or not stat["n"]:
        return "-"
    return f"{stat['k']}/{stat['n']} [{_fmt(stat['low'], 2)}, {_fmt(stat['high'], 2)}]"


def format_grid_table(cells: Sequence[Dict[str, Any]]) -> str:
    """
    A Markdown table, one row per cell: means with 95% bootstrap CIs over seeds, and detection / false-alarm counts
    over seeds with Wilson intervals. Timings are left to the JSON (they are not reproducible).
    """
    header = ["scenario", "defence", "seeds", "detected (poisoned) / false alarm (clean)", "target found"]
    header += [title for _, title in CONTINUOUS + SCORES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in cells:
        rate = cell.get("detection_rate") or cell.get("false_alarm_rate")
        kind = "detected " if cell["poisoned"] else "false alarm "
        cells_ = [cell["scenario"], cell["defence"], str(cell["n"]),
                  (kind + _rate_cell(rate)) if rate and rate["n"] else "-", _rate_cell(cell.get("target_found_rate"))]
        cells_ += [_mean_cell(cell["metrics"].get(name)) for name, _ in CONTINUOUS + SCORES]
        lines.append("| " + " | ".join(cells_) + " |")
    return "\n".join(lines)


def _summary(cell: Optional[Dict[str, Any]]) -> str:
    """One cell in a few words: verdict counts over seeds, then mean TPR / FPR (all images) / AUROC."""
    if cell is None:
        return "-"
    m = cell["metrics"]
    parts = []
    if cell["poisoned"]:
        found = cell.get("target_found_rate")
        if found and found["n"]:
            parts.append(f"right target {found['k']}/{found['n']}")
        for name, title in (("tpr", "TPR"), ("fpr", "FPR"), ("auroc", "AUROC")):
            if m.get(name) and np.isfinite(m[name]["mean"]):
                parts.append(f"{title} {_fmt(m[name]['mean'], 2)}")
    else:
        alarms = cell.get("false_alarm_rate")
        if alarms and alarms["n"]:
            parts.append(f"false alarms {alarms['k']}/{alarms['n']}")
        if m.get("fpr") and np.isfinite(m["fpr"]["mean"]):
            parts.append(f"FPR {_fmt(m['fpr']['mean'], 3)}")
    return ", ".join(parts) or "-"


def format_framework_table(cells: Sequence[Dict[str, Any]]) -> str:
    """
    The frameworks side by side (for grids over more than one framework): one row per attack, model width and defence,
    one column per framework, each entry the verdicts over seeds and the mean TPR / FPR / AUROC. Empty when the grid
    has one framework.
    """
    frameworks = list(dict.fromkeys(c["framework"] for c in cells))
    if len(frameworks) < 2:
        return ""
    by_key: Dict[Tuple, Dict[str, Dict[str, Any]]] = {}
    for c in cells:
        key = (c["label"], c["width"], c["robust"], c["nb_epochs"], c["defence"], json.dumps(c["defence_kwargs"],
                                                                                          sort_keys=True), c["retrain"])
        by_key.setdefault(key, {})[c["framework"]] = c
    lines = ["| attack | model | defence | " + " | ".join(frameworks) + " |", "|---|---|---|" + "---|" * len(frameworks)]
    for (label, width, robust, _, defence, _, _), row in by_key.items():
        model = width + (", robust" if robust else "")
        lines.append(f"| {label} | {model} | {defence} | " + " | ".join(_summary(row.get(f)) for f in frameworks) + " |")
    return "\n".join(lines)


def save_grid_results(cells: Sequence[Dict[str, Any]], path_prefix: str, spec: Optional[Dict[str, Any]] = None,
                      tasks: Optional[List[Dict[str, Any]]] = None, plot: bool = True) -> Tuple[str, ...]:
    """
    Write ``<prefix>.md`` (the table), ``<prefix>.json`` (spec, cells with per-seed values, per-task rows) and, with
    ``plot``, ``<prefix>.png`` (error bars); return the paths written.
    """
    folder = os.path.dirname(os.path.abspath(path_prefix))
    os.makedirs(folder, exist_ok=True)
    paths = [path_prefix + ".md", path_prefix + ".json"]
    with open(paths[0], "w", encoding="utf-8") as f:
        title = f"# Grid {spec['name']}\n\n" if spec and spec.get("name") else ""
        f.write(title + "Means over seeds with 95% bootstrap CIs; detection and false-alarm counts over seeds with "
                "95% Wilson intervals.\n\n" + format_grid_table(cells) + "\n")
        side_by_side = format_framework_table(cells)
        if side_by_side:
            f.write("\n## Frameworks side by side\n\nVerdicts over seeds (right target / false alarms) and mean TPR, "
                    "FPR (all training images) and AUROC.\n\n" + side_by_side + "\n")
    with open(paths[1], "w", encoding="utf-8") as f:
        json.dump({"spec": spec, "cells": list(cells), "tasks": tasks or []}, f, indent=1, default=str)
    if plot and cells:
        import matplotlib.pyplot as plt

        fig = plot_grid(cells)
        fig.savefig(path_prefix + ".png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path_prefix + ".png")
    return tuple(paths)


def plot_grid(cells: Sequence[Dict[str, Any]]):
    """Error bars per cell: detection / false-alarm rate (Wilson), TPR and FPR (bootstrap)."""
    from art_backdoor_ext.plotting import plot_error_bars

    labels = [f"{c['scenario']} | {c['defence']}" for c in cells]
    rates = [c.get("detection_rate") or c.get("false_alarm_rate") for c in cells]
    panels = {"detection (poisoned) / false alarm (clean) rate":
              [(r["rate"], r["low"], r["high"]) if r and r["n"] else None for r in rates]}
    for name, title in (("tpr", "TPR"), ("fpr", "FPR (all)"), ("auroc", "AUROC")):
        stats = [c["metrics"].get(name) for c in cells]
        if any(stats):
            panels[title] = [(s["mean"], s["low"], s["high"]) if s else None for s in stats]
    return plot_error_bars(labels, panels)
