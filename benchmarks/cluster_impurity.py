"""
Cluster-impurity benchmark (issue 5): which triggers does CI catch, on the compact (64-d features) and the wide (256-d)
reference CNN, with the paper's raw features and with this package's PCA-10 reduction?

The experiment is the grid ``benchmarks/grids/cluster_impurity.yaml`` (run through :func:`art_backdoor_ext.grid.
run_grid`, so it resumes from the grid cache and can run over several seeds or on Ray); this script applies the
command-line overrides to that spec and renders its results. For every trigger a PyTorch CNN is trained on mnist-5k
poisoned in a 3SC setting (target 7, sources 1, 2, 3, ``--n-per-source`` images each; the originals removed), plus a
clean training set. CI then runs twice with the same threshold (0.5, the authors') and the same 2x2 blur: ``ci-raw``
(Gaussian mixtures on the raw penultimate features: the paper) and ``ci`` (PCA to 10 dimensions per class first). The
threshold is never tuned per case.

Columns beyond the harness table (read from the rows' ``details``): the number of mixture components BIC chose for
the target class and the median over all classes (the RE paper's "collapse" is 1 everywhere), the largest impurity in
the target class and in any other class, and the blur flip rate of the poisoned images (fraction whose prediction a
2x2 mean blur changes: CI's premise) and of the clean target-class images.

Usage: python benchmarks/cluster_impurity.py [--quick] [--epochs N] [--n-per-source N] [--widths compact,wide]
[--seeds N] [--cache DIR] [--backend ray]
Writes benchmarks/results/cluster_impurity.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

from art_backdoor_ext.evaluation import format_table, format_value
from art_backdoor_ext.grid import load_spec, run_grid

TARGET = 7
SPEC = os.path.join(os.path.dirname(__file__), "grids", "cluster_impurity.yaml")
QUICK_ATTACKS = ["isolated-pixels", "clean", "pattern-E", "localised", "pattern-A"]
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
    "clean": "clean",
}


def build_spec(args) -> dict:
    """The grid spec of ``SPEC`` with the command-line overrides applied."""
    spec = load_spec(args.spec).as_dict()
    if args.quick:
        spec["attacks"] = [a for a in spec["attacks"] if a["label"] in QUICK_ATTACKS]
    if args.epochs is not None:
        spec["nb_epochs"] = [args.epochs]
    if args.widths:
        spec["width"] = args.widths.split(",")
    if args.seeds is not None:
        spec["seeds"] = args.seeds
    if args.n_per_source is not None:
        for a in spec["attacks"]:
            if a["attack"] != "clean":
                a["n_per_source"] = args.n_per_source
    return spec


def details_of(result):
    """One detail record per (scenario, CI variant) of a finished grid, from the rows' ``details``."""
    details, results = [], []
    for label, res in result.scenario_results():
        results.append(res)
        sc = res.scenario
        for row in res.rows:
            d = row.extra
            if "nb_components" not in d:  # a result cached by a version that kept no details
                logging.warning("%s %s seed %d: no CI details in the cached result; recompute it (--force or "
                                "another --cache).", label, row.defence, sc.seed)
                continue
            comps = {int(c): k for c, k in d["nb_components"].items()}
            imp = {int(c): v for c, v in d["max_impurity"].items()}
            details.append({
                "width": sc.width, "seed": sc.seed, "attack": label, "label": ATTACK_LABELS.get(label, label),
                "asr": res.asr, "acc": res.clean_accuracy, "defence": row.defence, "detected": row.detected,
                "target_class": row.target_class, "suspected": d.get("suspected_classes"),
                "k_target": comps[TARGET], "k_median": float(np.median(list(comps.values()))),
                "imp_target": imp[TARGET], "imp_other": max(v for c, v in imp.items() if c != TARGET),
                "flip_poison": d["flip_poison"], "flip_clean_target": d["flip_clean_by_class"][TARGET],
                "tpr": row.tpr, "fpr_target": row.fpr_target, "fpr": row.fpr, "seconds": row.seconds,
                "report": {k: d[k] for k in ("per_class", "threshold", "reduce", "nb_dims", "layer")},
            })
    return results, details


def detail_table(details) -> str:
    header = ["CNN", "seed", "trigger", "ASR", "CI", "k target", "k median", "max imp. target", "max imp. other",
              "blur flips poison", "blur flips clean target", "detected", "target", "TPR", "FPR (target)",
              "FPR (all)", "s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for d in details:
        detected = d["detected"]
        verdict = ("yes (right)" if d["target_class"] == TARGET else f"yes (wrong: {d['target_class']})") \
            if detected else "no"
        if d["attack"] == "clean":
            verdict = "false alarm" if detected else "no (correct)"
        cells = [d["width"], d["seed"], d["label"], d["asr"], d["defence"], d["k_target"], d["k_median"],
                 d["imp_target"], d["imp_other"], d["flip_poison"], d["flip_clean_target"], verdict, d["target_class"], d["tpr"],
                 d["fpr_target"], d["fpr"], d["seconds"]]
        lines.append("| " + " | ".join(format_value(c, 2) for c in cells) + " |")
    return "\n".join(lines)


def plot(details, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from art_backdoor_ext.plotting.impurity import plot_impurity

    first_seed = min((d["seed"] for d in details), default=0)
    chosen = [d for d in details if d["attack"] in ("isolated-pixels", "clean") and d["seed"] == first_seed]
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
    parser.add_argument("--spec", default=SPEC, help="grid spec (default benchmarks/grids/cluster_impurity.yaml)")
    parser.add_argument("--quick", action="store_true", help="five triggers (incl. clean) instead of ten")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (the spec's: 10)")
    parser.add_argument("--n-per-source", type=int, default=None, help="poisoned images per source class (50)")
    parser.add_argument("--widths", default=None, help="comma-separated CNN widths (the spec's: compact,wide)")
    parser.add_argument("--seeds", type=int, default=None, help="number of training seeds (the spec's: 1)")
    parser.add_argument("--cache", default=".grid-cache", help="grid cache folder (resumes an interrupted run)")
    parser.add_argument("--backend", default="local", choices=["local", "ray"])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cluster_impurity"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.perf_counter()
    spec = build_spec(args)
    result = run_grid(spec, cache=args.cache, backend=args.backend)
    results, details = details_of(result)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    header = write(results, details, args, spec, time.perf_counter() - start)
    try:
        plot(details, args.out + ".png")
    except Exception as exc:  # plotting must not lose the measured numbers
        logging.warning("plot failed: %s", exc)
    logging.info("%s", header + detail_table(details))


def write(results, details, args, spec, seconds: float) -> str:
    """Write the Markdown and JSON results; return the Markdown header."""
    attack = next(a for a in spec["attacks"] if a["attack"] != "clean")
    header = (f"# Cluster impurity on mnist-5k, 3SC (target {TARGET}, sources {attack['sources']}, "
              f"{attack['n_per_source']}/source), PyTorch CNN, {spec['nb_epochs'][0]} epochs"
              f"{' (quick)' if args.quick else ''}; threshold 0.5, 2x2 blur\n\n"
              f"Grid `{spec['name']}` ({len(spec['seeds'])} seed(s)), {seconds:.0f} s for this run (cached tasks "
              f"are read back; each row's `s` is its defence's own time when it was computed).\n\n")
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(header + detail_table(details) + "\n\n## Harness table\n\n" + format_table(results) + "\n")
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "spec": spec, "results": [r.as_dict() for r in results],
                   "details": [{k: v for k, v in d.items() if k != "report"} | {"per_class": d["report"]["per_class"]}
                               for d in details]}, f, indent=1, default=str)
    return header


if __name__ == "__main__":
    main()
