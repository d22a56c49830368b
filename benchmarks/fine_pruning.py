"""
Fine-pruning benchmark: compact vs wide reference CNN, faithful vs improved fine-tuning, thresholds 2/4/6%, last vs
second-to-last convolution layer, the AC+retrain+FP pipeline, and the visible triggers / patterns A-F (one seed); and,
with ``--ablation``, the multi-seed ablation grid (default, paper, prune only, fine-tune only; compact and wide,
PyTorch and Keras, BadNets and the chessboard patch, 5 seeds).

The defender's clean tuning set is 10% of the clean training set (the harness's ``"fine-pruning"`` row); accuracy and
ASR are measured on the whole test set. Writes ``benchmarks/results/fine_pruning.{json,md,png}``.

    .venv/bin/python benchmarks/fine_pruning.py --quick      # a few minutes: BadNets on PyTorch, compact + wide
    .venv/bin/python benchmarks/fine_pruning.py              # + the other triggers, patterns A-F and Keras
    .venv/bin/python benchmarks/fine_pruning.py --ablation --cache .grid-cache   # the 5-seed ablation grid
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from art_backdoor_ext.evaluation import Scenario, prepare_scenario, run_defences  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
FAITHFUL = {"learning_rate": None, "nb_epochs": 5, "anneal": False, "reinit_head": False}  # FinePruning.PAPER
IMPROVED = {"learning_rate": 5e-3, "nb_epochs": 5, "anneal": False, "reinit_head": False}  # 5x the training rate
ABLATION_SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grids", "fine_pruning_ablation.yaml")
VARIANTS = (("fine-pruning", "fine-prune (default)"), ("fine-pruning-paper", "fine-prune (paper)"),
            ("prune-only", "prune only"), ("fine-tune-only", "fine-tune only"))


def render_ablation(cells):
    """The ablation table from grid cells: per model and attack, ASR and accuracy after each variant (mean [95% CI])."""
    def ci(stat, digits=2):
        if not stat or not np.isfinite(stat["mean"]):
            return "-"
        return f"{stat['mean']:.{digits}f} [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"

    groups = {}
    for c in cells:
        groups.setdefault((c["framework"], c["width"], c["label"]), {})[c["defence"]] = c
    head = ["model", "attack", "seeds", "acc before", "ASR before"]
    for _, name in VARIANTS:
        head += [f"{name}: ASR", f"{name}: acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (framework, width, label), by_def in groups.items():
        any_cell = next(iter(by_def.values()))
        m = any_cell["metrics"]
        row = [f"{framework} {width}", label, str(any_cell["n"]), ci(m.get("clean_accuracy"), 3), ci(m.get("asr"))]
        for defence, _ in VARIANTS:
            cm = by_def.get(defence, {}).get("metrics", {})
            row += [ci(cm.get("asr_after")), ci(cm.get("acc_after"), 3)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def run_ablation(cache, backend="local", workers=None):
    """Run (or resume from ``cache``) the ablation grid and write results/fine_pruning_ablation.{md,json,png}."""
    from art_backdoor_ext.grid import run_grid

    prefix = os.path.join(RESULTS, "fine_pruning_ablation")
    result = run_grid(ABLATION_SPEC, cache=cache, backend=backend, workers=workers, out=prefix)
    table = render_ablation(result.cells)
    with open(prefix + ".md", "a", encoding="utf-8") as f:
        f.write("\n## Ablation: what does the work\n\nMeans over training seeds with 95% bootstrap CIs; accuracy and "
                "ASR on the whole test set after each variant. The defender's clean data is 10% of the clean training "
                "set (400 images).\n\n" + table + "\n")
    return table


def run_variant(ctx, name, defence="fine-pruning", **kwargs):
    (row,) = run_defences(ctx, [defence], defence_kwargs={defence: kwargs})
    report, seconds = row.report, row.seconds
    return {
        "scenario": ctx.scenario.name,
        "variant": name,
        "defence": defence,
        "layer": report["layer"],
        "max_acc_drop": report["max_acc_drop"],
        "pruned": f"{report['nb_pruned']}/{report['nb_channels']}",
        "acc_before": ctx.clean_accuracy,
        "asr_before": ctx.asr,
        "acc_pruned_holdout": report["holdout_accuracy_pruned"],
        "asr_pruned": report["asr_pruned"],
        "acc_after": row.clean_accuracy,
        "asr_after": row.asr,
        "seconds": seconds,
        "notes": report.get("notes", ""),
        "curve": report["pruning_curve"],
        "fraction_pruned": report["fraction_pruned"],
    }


def fine_tune_only(ctx, name, **kwargs):
    """Control: fine-tune a copy on the same tuning set without pruning (does the pruning matter?)."""
    return dict(run_variant(ctx, name, defence="fine-tune-only", **kwargs), notes="control")


def table(rows):
    head = ["scenario", "variant", "layer", "thr", "pruned", "acc before", "ASR before", "ASR pruned only",
            "acc after", "ASR after", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        thr = "-" if np.isnan(r["max_acc_drop"]) else f"{100 * r['max_acc_drop']:.0f}%"
        cells = [r["scenario"], r["variant"], r["layer"], thr, r["pruned"],
                 f"{r['acc_before']:.3f}", f"{r['asr_before']:.3f}", f"{r['asr_pruned']:.3f}", f"{r['acc_after']:.3f}",
                 f"{r['asr_after']:.3f}", f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from art_backdoor_ext.plotting import plot_pruning_curve

    picks = [r for r in rows if r["variant"].startswith("full curve")]
    if not picks:
        return None
    fig, axes = plt.subplots(1, len(picks), figsize=(6 * len(picks), 4), squeeze=False)
    for ax, r in zip(axes[0], picks):
        curve = dict(r["curve"], chosen=r["fraction_pruned"], max_acc_drop=r["max_acc_drop"])
        plot_pruning_curve(curve, ax=ax, title=f"{r['scenario']} {r['layer']} (before fine-tuning)")
        base = curve["accuracy"][0]
        for thr in (0.02, 0.04, 0.06):
            ax.axhline(base - thr, color="grey", linewidth=0.5, linestyle=":")
    fig.savefig(path, dpi=120)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="BadNets on PyTorch only (a few minutes)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 5 quick, 10 full)")
    parser.add_argument("--keras", action="store_true", help="also the Keras 3 mask path (on by default when full)")
    parser.add_argument("--ablation", action="store_true", help="run the multi-seed ablation grid "
                        "(grids/fine_pruning_ablation.yaml) instead, resuming from --cache")
    parser.add_argument("--cache", default=".grid-cache", help="grid cache folder (--ablation)")
    parser.add_argument("--backend", default="local", choices=["local", "ray"], help="grid backend (--ablation)")
    parser.add_argument("--workers", type=int, default=None, help="ray workers (--ablation)")
    parser.add_argument("--render", nargs="+", default=None, metavar="GRID_JSON",
                        help="only write results/fine_pruning_ablation.md from grid result files (e.g. parts of the "
                             "ablation run separately)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.render:
        cells = [c for path in args.render for c in json.load(open(path, encoding="utf-8"))["cells"]]
        table = render_ablation(cells)
        with open(os.path.join(RESULTS, "fine_pruning_ablation.md"), "w", encoding="utf-8") as f:
            f.write("# Fine-pruning ablation (issue 18)\n\nMeans over training seeds with 95% bootstrap CIs; accuracy "
                    "and ASR on the whole test set after each variant; the defender's clean data is 10% of the clean "
                    "training set (400 images). Sources: " + ", ".join(os.path.basename(p) for p in args.render) +
                    ".\n\n" + table + "\n")
        print(table)
        return
    if args.ablation:
        logging.getLogger("art_backdoor_ext.grid").setLevel(logging.INFO)
        print(run_ablation(args.cache, args.backend, args.workers))
        return
    epochs = args.epochs or (5 if args.quick else 10)
    step = 4 if args.quick else 1
    rows = []

    def add(ctx, name, **kw):
        kw.setdefault("step", step)
        row = run_variant(ctx, name, **kw)
        rows.append(row)
        print(f"{row['scenario']:<36} {name:<34} {row['pruned']:>7}  "
              f"acc {row['acc_before']:.3f}->{row['acc_after']:.3f}"
              f"  ASR {row['asr_before']:.3f}->{row['asr_after']:.3f}  {row['seconds']:.0f}s", flush=True)

    # 1. BadNets: compact vs wide, faithful vs improved; thresholds, layers and the AC pipeline on the wide model
    for width in ("compact", "wide"):
        ctx = prepare_scenario(Scenario(attack="badnets", fraction=0.05, width=width, nb_epochs=epochs))
        add(ctx, "faithful (Adam 1e-3, 5 ep)", **FAITHFUL)
        add(ctx, "improved (lr 5e-3, 5 ep)", **IMPROVED)
        for name, kw in (("control: fine-tune only, Adam 1e-3", FAITHFUL),
                         ("control: fine-tune only, lr 5e-3", IMPROVED)):
            rows.append(fine_tune_only(ctx, name, **kw))
        if width == "wide":
            add(ctx, "full curve, improved", full_curve=True, **IMPROVED)
            for thr in (0.02, 0.06):
                add(ctx, f"improved, threshold {thr:.0%}", max_acc_drop=thr, **IMPROVED)
            add(ctx, "faithful, second-to-last conv", layer="conv1", **FAITHFUL)
            add(ctx, "improved, second-to-last conv", layer="conv1", **IMPROVED)
            add(ctx, "AC+retrain+FP faithful", defence="ac+retrain+fine-pruning", **FAITHFUL)
            add(ctx, "AC+retrain+FP improved", defence="ac+retrain+fine-pruning", **IMPROVED)
    # 2. the other visible triggers and patterns A-F on the wide model
    if not args.quick:
        from art_backdoor_ext.evaluation import ATTACKS

        attacks = ["localised", "distributed"] + sorted(a for a in ATTACKS if a.startswith("pattern-"))
        for attack in attacks:
            ctx = prepare_scenario(Scenario(attack=attack, fraction=0.05, width="wide", nb_epochs=epochs))
            add(ctx, "faithful (Adam 1e-3, 5 ep)", **FAITHFUL)
            add(ctx, "improved (lr 5e-3, 5 ep)", **IMPROVED)
    # 3. Keras 3 (mask path)
    if args.keras or not args.quick:
        for width in ("compact", "wide"):
            ctx = prepare_scenario(Scenario(attack="badnets", fraction=0.05, width=width, nb_epochs=epochs,
                                            framework="keras"))
            add(ctx, "faithful (Adam 1e-3, 5 ep)", **FAITHFUL)
            add(ctx, "improved (lr 5e-3, 5 ep)", **IMPROVED)

    os.makedirs(RESULTS, exist_ok=True)
    prefix = os.path.join(RESULTS, "fine_pruning")
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump({"quick": args.quick, "epochs": epochs, "step": step, "rows": rows}, f, indent=2, default=float)
    md = table(rows)
    with open(prefix + ".md", "w", encoding="utf-8") as f:
        f.write(f"Fine-pruning ({'quick' if args.quick else 'full'}: {epochs} training epochs, pruning step {step}, "
                "tuning set = 10% of the clean training set, metrics on the whole test set)\n\n" + md + "\n")
    plot(rows, prefix + ".png")
    print(md)


if __name__ == "__main__":
    main()
