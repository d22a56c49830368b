"""
Cluster-impurity benchmark (issue 5): which triggers does CI catch, on the compact (64-d features) and the wide (256-d)
reference CNN, with the paper's raw features and with this package's PCA-10 reduction?

For every trigger a PyTorch CNN is trained on mnist-5k poisoned in a 3SC setting (target 7, sources 1, 2, 3,
``--n-per-source`` images each; the originals removed), plus a clean training set. CI then runs twice with the same
threshold (0.5, the authors') and the same 2x2 blur: ``ci-raw`` (Gaussian mixtures on the raw penultimate features:
the paper) and ``ci`` (PCA to 10 dimensions per class first). The threshold is never tuned per case.

Columns beyond the harness table: the number of mixture components BIC chose for the target class and the median over
all classes (the RE paper's "collapse" is 1 everywhere), the largest impurity in the target class and in any other
class, and the blur flip rate of the poisoned images (fraction whose prediction a 2x2 mean blur changes: CI's premise)
and of the clean target-class images.

Usage: python benchmarks/cluster_impurity.py [--quick] [--epochs N] [--n-per-source N]
Writes benchmarks/results/cluster_impurity.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

from art_backdoor_ext.evaluation import (Scenario, ScenarioResult, format_table, format_value, prepare_scenario,
                                         run_defences)

TARGET = 7
SOURCES_3SC = [1, 2, 3]
VARIANTS = ("ci-raw", "ci")  # harness rows: the paper (raw features) and the default (PCA to 10 dimensions)
QUICK_ATTACKS = ["isolated-pixels", None, "pattern-E", "localised", "pattern-A"]
FULL_ATTACKS = ["isolated-pixels", None, "pattern-E", "localised", "distributed", "pattern-A", "pattern-B", "pattern-C",
                "pattern-D", "pattern-F"]
ATTACK_LABELS = {
    "isolated-pixels": "4 isolated +0.35 pixels (E, brightening)",
    "pattern-E": "pattern E (random pixels)",
    "localised": "visible 3x3 square",
    "distributed": "visible 2 squares",
    "pattern-A": "pattern A (chessboard)",
    "pattern-B": "pattern B (static grid)",
    "pattern-C": "pattern C (cross)",
    "pattern-D": "pattern D (square)",
    "pattern-F": "pattern F (L)",
    None: "clean",
}


def run(widths, attacks, epochs: int, n_per_source: int, verbose: bool = False):
    """Train every (width, attack) scenario and run both CI variants; return (harness results, detail rows)."""
    results, details = [], []
    for width in widths:
        for attack in attacks:
            sc = Scenario(attack=attack, target=TARGET, sources=SOURCES_3SC if attack else None,
                          n_per_source=n_per_source if attack else None, width=width, nb_epochs=epochs)
            ctx = prepare_scenario(sc, verbose=verbose)
            rows = run_defences(ctx, list(VARIANTS))
            for row in rows:
                name, report, rates = row.defence, row.report, row
                seconds = row.seconds
                comps = report["nb_components"]
                row.extra.update({"nb_components": comps, "max_impurity": report["max_impurity"],
                                  "per_class_target": report["per_class"][TARGET]})
                changed = report["prediction_changed"]
                clean_t = (ctx.y_train == TARGET) & ~ctx.is_poison
                others = [v for c, v in report["max_impurity"].items() if c != TARGET]
                details.append({
                    "width": width, "attack": attack or "clean", "label": ATTACK_LABELS.get(attack, attack),
                    "asr": ctx.asr, "acc": ctx.clean_accuracy, "defence": name,
                    "detected": report["detected"], "target_class": report["target_class"],
                    "suspected": report["suspected_classes"],
                    "k_target": comps[TARGET], "k_median": float(np.median(list(comps.values()))),
                    "imp_target": report["max_impurity"][TARGET], "imp_other": max(others),
                    "flip_poison": float(changed[ctx.is_poison].mean()) if ctx.is_poison.any() else float("nan"),
                    "flip_clean_target": float(changed[clean_t].mean()),
                    "tpr": rates.tpr, "fpr_target": rates.fpr_target, "fpr": rates.fpr, "seconds": seconds,
                    "report": report,
                })
                logging.info("%s %s %s: detected %s target %s TPR %.2f FPR(t) %.2f", width, attack, name,
                             report["detected"], report["target_class"], rates.tpr, rates.fpr_target)
            results.append(ScenarioResult(sc, ctx.clean_accuracy, ctx.asr, ctx.train_seconds, rows))
    return results, details


def detail_table(details) -> str:
    header = ["CNN", "trigger", "ASR", "CI", "k target", "k median", "max imp. target", "max imp. other",
              "blur flips poison", "blur flips clean target", "detected", "target", "TPR", "FPR (target)",
              "FPR (all)", "s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for d in details:
        detected = d["detected"]
        verdict = ("yes (right)" if d["target_class"] == TARGET else f"yes (wrong: {d['target_class']})") \
            if detected else "no"
        if d["attack"] == "clean":
            verdict = "false alarm" if detected else "no (correct)"
        cells = [d["width"], d["label"], d["asr"], d["defence"], d["k_target"], d["k_median"], d["imp_target"],
                 d["imp_other"], d["flip_poison"], d["flip_clean_target"], verdict, d["target_class"], d["tpr"],
                 d["fpr_target"], d["fpr"], d["seconds"]]
        lines.append("| " + " | ".join(format_value(c, 2) for c in cells) + " |")
    return "\n".join(lines)


def plot(details, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from art_backdoor_ext.plotting.impurity import plot_impurity

    chosen = [d for d in details if d["attack"] in ("isolated-pixels", "clean")]
    if not chosen:
        return
    fig, axes = plt.subplots(len(chosen) // 2 + len(chosen) % 2, 2, figsize=(11, 2.9 * (len(chosen) // 2 + 1)),
                             squeeze=False)
    for ax, d in zip(axes.flat, chosen):
        plot_impurity(d["report"], ax=ax, true_target=TARGET if d["attack"] != "clean" else None,
                      title=f"{d['width']} CNN, {d['label']}, {d['defence']}")
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="five triggers (incl. clean) instead of ten")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--n-per-source", type=int, default=50, help="poisoned images per source class (default 50)")
    parser.add_argument("--widths", default="compact,wide", help="comma-separated CNN widths")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cluster_impurity"))
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    attacks = QUICK_ATTACKS if args.quick else FULL_ATTACKS
    start = time.perf_counter()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    results, details = [], []
    for attack in attacks:  # one scenario at a time (both widths per trigger); the files are rewritten after each
        for width in args.widths.split(","):
            res, det = run([width], [attack], args.epochs, args.n_per_source, args.verbose)
            results += res
            details += det
            header = write(results, details, args, time.perf_counter() - start)
    try:
        plot(details, args.out + ".png")
    except Exception as exc:  # plotting must not lose the measured numbers
        logging.warning("plot failed: %s", exc)
    print(header + detail_table(details))


def write(results, details, args, seconds: float) -> str:
    """Write the Markdown and JSON results; return the Markdown header."""
    header = (f"# Cluster impurity on mnist-5k, 3SC (target {TARGET}, sources {SOURCES_3SC}, "
              f"{args.n_per_source}/source), PyTorch CNN, {args.epochs} epochs{' (quick)' if args.quick else ''}; threshold 0.5, 2x2 blur; "
              f"{seconds:.0f} s so far\n\n")
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(header + detail_table(details) + "\n\n## Harness table\n\n" + format_table(results) + "\n")
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "results": [r.as_dict() for r in results],
                   "details": [{k: v for k, v in d.items() if k != "report"} | {"per_class": d["report"]["per_class"]}
                               for d in details]}, f, indent=1, default=str)
    return header

if __name__ == "__main__":
    main()
