"""
The RE paper's Tables 2-4 at small scale on mnist-5k: patterns A-F in 1SC / 3SC / 9SC settings plus clean runs; for
each, the RE defence beside cluster impurity ("ci", when registered), ART's Activation Clustering ("ac") and Spectral
Signatures ("ss") on the same poisoned set: detection (and target right), TPR / FPR (target class), clean accuracy and
ASR after retraining on the cleansed set, seconds.

Poisoned images per source class scale the paper's 500 / 200 / 60 (of 5,000 per CIFAR-10 class) to the ~400 images
per mnist-5k class, with a floor so that the small CNN can learn the trigger at all (see ``--n-per-source``).

Usage: python benchmarks/reverse_engineering.py [--quick] [--width compact|wide] [--patterns A C] [--configs 3SC]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

from art_backdoor_ext.evaluation import DEFENCES, Scenario, _ensure_registered, run_scenario, save_results, format_value

CONFIG_SOURCES = {"1SC": [1], "3SC": [1, 2, 3], "9SC": None}
DEFAULT_N = {"1SC": 100, "3SC": 40, "9SC": 15}


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="two scenarios only (C 3SC, clean)")
    parser.add_argument("--patterns", nargs="+", default=list("ABCDEF"))
    parser.add_argument("--configs", nargs="+", default=["1SC", "3SC", "9SC"])
    parser.add_argument("--no-clean", action="store_true")
    parser.add_argument("--defences", nargs="+", default=None, help="default: re, ci (if registered), ac, ss")
    parser.add_argument("--width", default="compact", choices=["compact", "wide"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--target", type=int, default=7)
    parser.add_argument("--n-per-source", nargs=3, type=int, default=None, metavar=("N1SC", "N3SC", "N9SC"))
    parser.add_argument("--no-retrain", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    _ensure_registered()
    defences = args.defences or [d for d in ("re", "ci", "ac", "ss") if d in DEFENCES]
    n_per = dict(DEFAULT_N)
    if args.n_per_source:
        n_per = dict(zip(["1SC", "3SC", "9SC"], args.n_per_source))
    runs = [(p, c) for p in args.patterns for c in args.configs]
    if not args.no_clean:
        runs.append(("clean", "-"))
    if args.quick:
        runs = [("C", "3SC"), ("clean", "-")]
    out = args.out or f"benchmarks/results/reverse_engineering{'_quick' if args.quick else ''}" \
                      f"{'_wide' if args.width == 'wide' else ''}"
    start = time.perf_counter()
    entries, results = [], []
    for pattern, config in runs:
        if pattern == "clean":
            sc = Scenario(dataset="mnist-5k", attack=None, width=args.width, nb_epochs=args.epochs, seed=args.seed)
        else:
            sc = Scenario(dataset="mnist-5k", attack=f"pattern-{pattern}", target=args.target,
                          sources=CONFIG_SOURCES[config], n_per_source=n_per[config], width=args.width,
                          nb_epochs=args.epochs, seed=args.seed)
        res = run_scenario(sc, defences=defences, retrain=not args.no_retrain)
        entries.append((pattern, config, res))
        results.append(res)
        print(f"[{time.perf_counter() - start:.0f}s] {pattern} {config}: acc {res.clean_accuracy:.3f} ASR "
              f"{res.asr:.3f}", file=sys.stderr, flush=True)
        # keep partial results on disk (long runs)
        save_results(results, out)
        with open(out + ".md", "w", encoding="utf-8") as f:
            f.write(table(entries) + "\n")
    meta = {"width": args.width, "epochs": args.epochs, "n_per_source": n_per, "defences": defences,
            "total_seconds": time.perf_counter() - start}
    with open(out + "_meta.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    print(table(entries))
    print(f"\nTotal {meta['total_seconds']:.0f}s; results in {out}.json / .md")


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
