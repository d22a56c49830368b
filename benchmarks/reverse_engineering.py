"""
The RE paper's Tables 2-4 (and, for cluster impurity, Table 12) at small scale on mnist-5k: patterns A-F and the
paper's MNIST chessboard patch in 1SC / 3SC / 9SC settings plus a clean run, on the compact and the wide reference CNN.
On every poisoned set the same trained model is given to

* ``re``: the RE defence with its defaults (per-source normalisation of the reciprocal statistics before the test,
  ``normalize_sources=True``; not in the paper);
* ``re-paper``: the same estimated patterns with the paper's detection rule (``normalize_sources=False``);
* ``ci``: cluster impurity (PCA-10 mixtures, 2x2 blur, threshold 0.5);
* ``ac`` / ``ss``: ART's Activation Clustering and Spectral Signatures,

and reports detection (and whether the target is right), TPR / FPR on the target class, clean accuracy and ASR after
retraining on the cleansed set, and seconds. A defence that keeps every image reports the original model's numbers
(retraining on the identical set with the same seed gives the same model); defences that keep the same images share
one retrained model.

Poisoned images per source class scale the paper's 500 / 200 / 60 (of 5,000 per CIFAR-10 class) to the ~400 images
per mnist-5k class, with a floor so that the small CNN can learn the trigger at all (see ``--n-per-source``).

The experiment is a grid (:func:`art_backdoor_ext.grid.run_grid`): the command line builds its spec (``--print-spec``
shows it; ``benchmarks/grids/reverse_engineering_compact.yaml`` is the default one), the grid cache resumes an
interrupted run and ``--seeds`` repeats it over training seeds; this script renders the tables and plots from the rows
(their ``details`` hold the RE report's cleansing fields, statistics and patterns).

Usage: python benchmarks/reverse_engineering.py [--quick] [--width compact|wide] [--patterns A C] [--configs 3SC]
[--seeds N] [--cache DIR] [--backend ray] [--print-spec]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

from art_backdoor_ext.evaluation import DEFENCES, Scenario, format_value, load_results, save_results
from art_backdoor_ext.grid import run_grid

CONFIG_SOURCES = {"1SC": [1], "3SC": [1, 2, 3], "9SC": None}
DEFAULT_N = {"1SC": 100, "3SC": 50, "9SC": 20}
# pattern letter -> harness attack; "A6" is the RE paper's own MNIST attack (6x6 chessboard patch of 25/255)
ATTACKS = {**{p: f"pattern-{p}" for p in "ABCDEF"}, "A6": "chessboard-patch"}


PLOTTED = {("A6", "3SC"), ("C", "3SC"), ("clean", "-")}


def save_plots(details, prefix: str) -> None:
    """The paper's Figures 2 and 15 for one scenario: recovered vs true pattern, reciprocal statistics + Gamma null."""
    import matplotlib.pyplot as plt

    from art_backdoor_ext.plotting import plot_pattern_comparison, plot_reciprocal_statistics

    report = dict(details)  # read back from JSON: class keys are strings, arrays lists
    report["class_p_values"] = {int(c): v for c, v in report["class_p_values"].items()}
    report["null_params"] = {int(c): v for c, v in report["null_params"].items()}
    if report.get("pattern") is not None:
        true = report.get("trigger_pattern")
        fig = plot_pattern_comparison(np.asarray(report["pattern"], np.float32),
                                      None if true is None else np.asarray(true, np.float32),
                                      title=f"recovered ({report['source_class']}->{report['target_class']})")
        fig.savefig(prefix + "_pattern.png", dpi=110)
        plt.close(fig)
    fig = plot_reciprocal_statistics(report)
    fig.savefig(prefix + "_statistics.png", dpi=110)
    plt.close(fig)


def _label(scenario: Scenario) -> str:
    if not scenario.poisoned:
        return "clean"
    return {a: p for p, a in ATTACKS.items()}.get(scenario.attack, scenario.attack)


def _config(scenario: Scenario) -> str:
    if not scenario.poisoned:
        return "-"
    sources = None if scenario.sources is None else list(scenario.sources)
    return {str(v): k for k, v in CONFIG_SOURCES.items()}.get(str(sources), str(sources))


def table(entries) -> str:
    header = ["pattern", "config", "acc", "ASR", "defence", "detected", "target", "target ok", "TPR", "FPR (target)",
              "acc after", "ASR after", "seconds", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for pattern, config, res in entries:
        for row in res.rows:
            ok = None if res.scenario.attack in (None, "clean") or row.detected is None \
                else (row.target_class == res.scenario.target)
            cells = [pattern, config, res.clean_accuracy, res.asr, row.defence, row.detected, row.target_class, ok,
                     row.tpr, row.fpr_target, row.clean_accuracy, row.asr, row.seconds, row.notes]
            lines.append("| " + " | ".join(format_value(c) for c in cells) + " |")
    return "\n".join(lines)


def summary(entries, min_asr: float = 0.5) -> str:
    """
    Per defence: detections with the right target on the attacks that took (test ASR >= ``min_asr``) and on those
    that did not (the model may still have memorised the poisoned training images), wrong-target detections, false
    detections on the clean model, and mean TPR / FPR (target) / ASR after retraining over the attacks that took.
    """
    names = []
    for _, _, res in entries:
        names += [r.defence for r in res.rows if r.defence not in names]
    header = ["defence", f"right target, ASR >= {min_asr}", f"right target, ASR < {min_asr}", "wrong target",
              "false alarm (clean)", "mean TPR", "mean FPR (target)", "mean ASR after", "mean seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        took, right_took, weak, right_weak, wrong, clean_fd = 0, 0, 0, 0, 0, []
        tpr, fpr, asr_after, secs = [], [], [], []
        for _, _, res in entries:
            row = next((r for r in res.rows if r.defence == name), None)
            if row is None:
                continue
            secs.append(row.seconds)
            if not res.scenario.poisoned:
                clean_fd.append(bool(row.detected))
                continue
            right = bool(row.detected) and row.target_class == res.scenario.target
            wrong += bool(row.detected) and not right
            if res.asr >= min_asr:
                took, right_took = took + 1, right_took + right
                tpr.append(row.tpr)
                fpr.append(row.fpr_target)
                if row.asr is not None and not np.isnan(row.asr):
                    asr_after.append(row.asr)
            else:
                weak, right_weak = weak + 1, right_weak + right
        no_rule = name == "ss"  # SS removes a share of every class and detects nothing by itself
        cells = [name, "-" if no_rule else f"{right_took}/{took}", "-" if no_rule else f"{right_weak}/{weak}",
                 "-" if no_rule else wrong, "-" if no_rule else f"{sum(clean_fd)}/{len(clean_fd)}",
                 np.mean(tpr) if tpr else None, np.mean(fpr) if fpr else None,
                 np.mean(asr_after) if asr_after else None, np.mean(secs) if secs else None]
        lines.append("| " + " | ".join(format_value(c, 2) for c in cells) + " |")
    return "\n".join(lines)


def comparison(old_path: str, new_path: str, defences=("re", "re-paper")) -> str:
    """
    Old vs new results of the same scenarios (two results files of this script), per scenario and RE row: detection
    and target, TPR, FPR (target) and ASR after retraining; scenarios missing from either file are left out.
    """
    def _index(path):
        return {(_label(r.scenario), _config(r.scenario)): r for r in load_results(path)}

    old, new = _index(old_path), _index(new_path)
    order = {p: i for i, p in enumerate(["A", "B", "C", "D", "E", "F", "A6", "clean"])}
    corder = {c: i for i, c in enumerate(["1SC", "3SC", "9SC", "-"])}
    keys = sorted(set(old) & set(new), key=lambda k: (order.get(k[0], 99), corder.get(k[1], 99)))
    header = ["pattern", "config", "ASR (old / new model)", "defence", "target old", "target new", "TPR old",
              "TPR new", "FPR old", "FPR new", "ASR after old", "ASR after new", "new notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def _target(row):
        if row is None:
            return "-"
        return "no" if not row.detected else str(row.target_class)

    for key in keys:
        ro, rn = old[key], new[key]
        for name in defences:
            a = next((r for r in ro.rows if r.defence == name), None)
            b = next((r for r in rn.rows if r.defence == name), None)
            if a is None and b is None:
                continue
            cells = [key[0], key[1], f"{format_value(ro.asr)} / {format_value(rn.asr)}", name, _target(a),
                     _target(b)]
            for field in ("tpr", "fpr_target", "asr"):
                cells += [None if a is None else getattr(a, field), None if b is None else getattr(b, field)]
            cells.append(b.notes if b is not None else "")
            lines.append("| " + " | ".join(format_value(c) for c in cells) + " |")
    return "\n".join(lines)


def build_spec(args) -> dict:
    """The grid spec of the command line: one attack entry per (pattern, config), labelled ``"<pattern> <config>"``."""
    defences = args.defences or [d for d in ("re", "re-paper", "ci", "ac", "ss") if d in DEFENCES]
    n_per = dict(DEFAULT_N)
    if args.n_per_source:
        n_per = dict(zip(["1SC", "3SC", "9SC"], args.n_per_source))
    runs = [(p, c) for p in args.patterns for c in args.configs]
    if not args.no_clean:
        runs.append(("clean", "-"))
    if args.quick:
        runs = [("A6", "3SC"), ("clean", "-")]
    attacks = []
    for pattern, config in runs:
        if pattern == "clean":
            attacks.append({"attack": "clean"})
        else:
            attacks.append({"attack": ATTACKS[pattern], "label": f"{pattern} {config}", "target": args.target,
                            "sources": None if CONFIG_SOURCES[config] is None else list(CONFIG_SOURCES[config]), "n_per_source": n_per[config]})
    return {"name": f"reverse-engineering-{args.width}{'-quick' if args.quick else ''}", "dataset": "mnist-5k",
            "framework": "pytorch", "width": args.width, "nb_epochs": args.epochs,
            "seeds": list(range(args.seed, args.seed + args.seeds)), "attacks": attacks,
            "defences": {d: {} for d in defences}, "retrain": True if args.retrain is None else args.retrain}


def entries_of(result):
    """``(pattern, config, ScenarioResult)`` per scenario of a finished grid, in the usual pattern / config order."""
    order = {p: i for i, p in enumerate(["A", "B", "C", "D", "E", "F", "A6", "clean"])}
    corder = {c: i for i, c in enumerate(["1SC", "3SC", "9SC", "-"])}
    entries = []
    for label, res in result.scenario_results():
        pattern, config = (label.split(" ") + ["-"])[:2] if label != "clean" else ("clean", "-")
        entries.append((pattern, config, res))
    return sorted(entries, key=lambda e: (order.get(e[0], len(order)), corder.get(e[1], len(corder)),
                                          e[2].scenario.seed))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="two scenarios only (A6 3SC, clean)")
    parser.add_argument("--patterns", nargs="+", default=["A", "B", "C", "D", "E", "F", "A6"],
                        choices=sorted(ATTACKS))
    parser.add_argument("--configs", nargs="+", default=["1SC", "3SC", "9SC"], choices=sorted(CONFIG_SOURCES))
    parser.add_argument("--no-clean", action="store_true")
    parser.add_argument("--defences", nargs="+", default=None, help="default: re, re-paper, ci, ac, ss")
    parser.add_argument("--width", default="compact", choices=["compact", "wide"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--target", type=int, default=7)
    parser.add_argument("--n-per-source", nargs=3, type=int, default=None, metavar=("N1SC", "N3SC", "N9SC"))
    parser.add_argument("--retrain", nargs="*", default=None,
                        help="defences whose cleansed sets are retrained on (default: all; none: --retrain)")
    parser.add_argument("--seed", type=int, default=0, help="first training seed")
    parser.add_argument("--seeds", type=int, default=1, help="number of training seeds (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--cache", default=".grid-cache", help="grid cache folder (an interrupted run resumes)")
    parser.add_argument("--backend", default="local", choices=["local", "ray"])
    parser.add_argument("--out", default=None)
    parser.add_argument("--print-spec", action="store_true", help="only print the grid spec (YAML) and exit")
    parser.add_argument("--render", metavar="JSON", default=None,
                        help="only re-render the Markdown tables of a results file written by this script")
    parser.add_argument("--compare", nargs=2, metavar=("OLD_JSON", "NEW_JSON"), default=None,
                        help="only print the old-vs-new table of the RE rows of two results files of this script")
    args = parser.parse_args(argv)
    if args.compare:
        print(comparison(*args.compare))
        return
    if args.render:
        entries = [(_label(res.scenario), _config(res.scenario), res) for res in load_results(args.render)]
        with open(args.render[:-len(".json")] + ".md", "w", encoding="utf-8") as f:
            f.write(table(entries) + "\n\n" + summary(entries) + "\n")
        return
    spec = build_spec(args)
    if args.print_spec:
        import yaml

        print(yaml.safe_dump(spec, sort_keys=False))
        return

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = args.out or f"benchmarks/results/reverse_engineering{'_quick' if args.quick else ''}_{args.width}"
    start = time.perf_counter()
    result = run_grid(spec, cache=args.cache, backend=args.backend)
    entries = entries_of(result)
    for pattern, config, res in entries:
        re_row = next((r for r in res.rows if r.defence == "re"), None)
        if re_row is not None and "reciprocal_statistics" in re_row.extra and (pattern, config) in PLOTTED \
                and res.scenario.seed == args.seed:
            save_plots(re_row.extra, f"{out}_{pattern}_{config}".replace("_-", ""))
    results = [res for _, _, res in entries]
    save_results(results, out)
    with open(out + ".md", "w", encoding="utf-8") as f:
        f.write(table(entries) + "\n\n" + summary(entries) + "\n")
    meta = {"width": args.width, "epochs": args.epochs, "spec": spec,
            "total_seconds": time.perf_counter() - start, "load_average_end": os.getloadavg(),
            "work": result.counts}
    with open(out + "_meta.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    print(table(entries) + "\n\n" + summary(entries))
    print(f"\nTotal {meta['total_seconds']:.0f}s; results in {out}.json / .md")


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
