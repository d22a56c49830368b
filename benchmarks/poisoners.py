"""
Poisoners benchmark (issue 3): does each trigger implant a backdoor in the reference CNN on mnist-5k?

For every trigger a compact PyTorch CNN is trained on the poisoned training set and its clean test accuracy and ASR
(source-class test images with the trigger classified as the target) are measured; "ASR (clean model)" is the same
trigger on a model of the same kind and seed trained on the clean training set, i.e. how often the trigger alone sends
source images to the target without any backdoor. Settings:

* visible localised / distributed triggers: 1% of the training set poisoned (AEGIS);
* invisible static / adversarial triggers: 30% of the training set poisoned (AEGIS, after Zhong et al.);
* the RE paper's patterns A-F: 3SC attack (sources 1, 2, 3), ``--n-per-source`` images per source class;
* localised, distributed, static and adversarial again with L2 PGD adversarial training (AEGIS Table 5).

The experiment is two grids (``benchmarks/grids/poisoners_standard.yaml`` and ``poisoners_robust.yaml``) with the
harness's reference rows ``none`` (the scenario's model) and ``clean-reference`` (the clean model), run through
:func:`art_backdoor_ext.grid.run_grid` (cached, resumable, ``--seeds`` for repetitions); this script applies the
command-line overrides and renders the table.

Target class 7 throughout. Usage: python benchmarks/poisoners.py [--quick] [--no-robust] [--epochs N]
[--robust-epochs N] [--n-per-source N] [--norm-bound XI] [--seeds N] [--cache DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

from art_backdoor_ext.datasets import load_dataset
from art_backdoor_ext.grid import load_spec, run_grid

TARGET = 7
SOURCES_3SC = [1, 2, 3]
GRIDS = os.path.join(os.path.dirname(__file__), "grids")


def build_specs(args, epochs: int, robust_epochs: int):
    """The standard (and, unless ``--no-robust``, the robust) grid spec with the command-line overrides."""
    adv = {"norm_bound": args.norm_bound, "surrogate_epochs": epochs, "max_source": 200 if args.quick else 500,
           "max_passes": 2 if args.quick else 3}
    specs = []
    for kind, nb_epochs in [("standard", epochs)] + ([] if args.no_robust else [("robust", robust_epochs)]):
        spec = load_spec(os.path.join(GRIDS, f"poisoners_{kind}.yaml")).as_dict()
        spec["nb_epochs"] = [nb_epochs]
        if args.seeds is not None:
            spec["seeds"] = args.seeds
        for a in spec["attacks"]:
            if a["attack"] == "adversarial":
                a["attack_kwargs"] = dict(adv)
            if a["attack"].startswith("pattern-"):
                a["n_per_source"] = args.n_per_source
        specs.append(spec)
    return specs, adv


def _setting(sc) -> str:
    if sc.fraction is not None:
        return f"{sc.fraction:.0%} (all-but-target)"
    return f"3SC {list(sc.sources)}, {sc.n_per_source}/source"


def records_of(result):
    """One record per scenario: the ``none`` row's model and the ``clean-reference`` row's clean model."""
    records = []
    for label, res in result.scenario_results():
        rows = {r.defence: r for r in res.rows}
        own, ref = rows["none"], rows["clean-reference"]
        sc = res.scenario
        records.append({
            "trigger": label, "setting": _setting(sc), "training": "robust (L2 PGD)" if sc.robust else "standard",
            "seed": sc.seed, "nb_poison": own.extra["nb_poison"], "clean_accuracy": res.clean_accuracy,
            "asr": res.asr, "asr_clean_model": ref.asr, "clean_model_accuracy": ref.clean_accuracy,
            "pattern_l2": own.extra.get("pattern_l2"), "train_seconds": res.train_seconds,
            "surrogate_fooling_rates": own.extra.get("surrogate_fooling_rates"), "scenario": {
                "seed": sc.seed, "attack": sc.attack},
        })
    return records


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and a smaller adversarial-trigger search")
    parser.add_argument("--epochs", type=int, default=None, help="standard training epochs (default 10; quick 5)")
    parser.add_argument("--robust-epochs", type=int, default=None, help="robust training epochs (default 5; quick 3)")
    parser.add_argument("--n-per-source", type=int, default=50, help="poisoned images per source class for A-F")
    parser.add_argument("--norm-bound", type=float, default=0.5, help="L2 radius of the adversarial trigger")
    parser.add_argument("--no-robust", action="store_true", help="skip the robust-training rows (the slow part)")
    parser.add_argument("--seeds", type=int, default=None, help="number of training seeds (the specs': 1)")
    parser.add_argument("--cache", default=".grid-cache", help="grid cache folder (an interrupted run resumes)")
    parser.add_argument("--backend", default="local", choices=["local", "ray"])
    parser.add_argument("--out", default=None, help="output prefix (default benchmarks/results/poisoners[_quick])")
    args = parser.parse_args(argv)
    epochs = args.epochs or (5 if args.quick else 10)
    robust_epochs = args.robust_epochs or (3 if args.quick else 5)
    out = args.out or ("benchmarks/results/poisoners" + ("_quick" if args.quick else "")
                        + ("_standard" if args.no_robust else ""))

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("benchmarks.poisoners")
    start = time.perf_counter()
    specs, adv_kwargs = build_specs(args, epochs, robust_epochs)
    records, clean_acc = [], {}
    for spec in specs:
        recs = records_of(run_grid(spec, cache=args.cache, backend=args.backend))
        records += recs
        clean_acc[spec["robust"][0]] = float(np.mean([r["clean_model_accuracy"] for r in recs]))
    for r in records:
        log.info("%s / %s: acc %.3f, ASR %.3f (clean model %.3f)", r["trigger"], r["training"], r["clean_accuracy"],
                 r["asr"], r["asr_clean_model"])

    header = ["trigger", "setting", "training", "seed", "#poison", "clean acc", "ASR", "ASR (clean model)", "|v|_2",
              "training s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        l2 = "-" if label_is_visible(r["trigger"]) or r["pattern_l2"] is None else f"{r['pattern_l2']:.3f}"
        lines.append(f"| {r['trigger']} | {r['setting']} | {r['training']} | {r['seed']} | {r['nb_poison']} | "
                     f"{r['clean_accuracy']:.3f} | {r['asr']:.3f} | {r['asr_clean_model']:.3f} | {l2} | "
                     f"{r['train_seconds']:.0f} |")
    note = (f"mnist-5k (4000 train / 1000 test), compact PyTorch CNN, target {TARGET}; standard training {epochs} "
            f"epochs, robust (L2 PGD eps 0.5) {robust_epochs} epochs; clean models (`clean-reference` rows, mean): "
            f"accuracy {clean_acc.get(False, float('nan')):.3f} (standard), "
            f"{clean_acc.get(True, float('nan')):.3f} (robust); adversarial "
            f"trigger: xi = {args.norm_bound}, surrogate {epochs} epochs, {adv_kwargs['max_source']} source images, "
            f"{adv_kwargs['max_passes']} passes. Grids {', '.join(s['name'] for s in specs)}; this run "
            f"{time.perf_counter() - start:.0f}s (cached scenarios are read back; `training s` is the model's own "
            f"training time when it was computed).")
    table = "\n".join(lines)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".md", "w", encoding="utf-8") as f:
        f.write(f"# Poisoners benchmark{' (quick)' if args.quick else ''}\n\n{note}\n\n{table}\n")
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump({"note": note, "specs": specs, "rows": records}, f, indent=2, default=str)
    _plot_triggers(records, load_dataset("mnist-5k", channels_first=True), out + ".png")
    log.info("%s\n\n%s\n\nResults in %s.md / .json / .png", note, table, out)


def label_is_visible(label: str) -> bool:
    return label in ("localised", "distributed")


def _plot_triggers(records, data, path) -> None:
    """One poisoned test image per standard-training trigger, and its additive pattern (amplified)."""
    try:
        from art_backdoor_ext.evaluation import ATTACKS, AttackContext
        from art_backdoor_ext.plotting.common import plot_images
    except ImportError:  # plotting is optional
        return
    (x_train, y_train), (x_test, y_test) = data
    x = x_test[y_test == SOURCES_3SC[0]][:1]
    images, titles = [x[0]], ["clean"]
    for r in records:
        if r["training"] != "standard" or r["trigger"] == "adversarial" or r["seed"] != records[0]["seed"]:
            continue
        sc = r["scenario"]
        ctx = AttackContext(x_train, y_train, x_test, y_test, 10, TARGET, SOURCES_3SC, "pytorch", sc["seed"])
        trig = ATTACKS[r["trigger"]](ctx)
        images.append(trig(x)[0])
        titles.append(r["trigger"])
    fig = plot_images(images, titles, ncols=len(images))
    fig.savefig(path, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
