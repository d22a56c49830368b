"""
Poisoners benchmark (issue 3): does each trigger implant a backdoor in the reference CNN on mnist-5k?

For every trigger a compact PyTorch CNN is trained on the poisoned training set and its clean test accuracy and ASR
(source-class test images with the trigger classified as the target) are measured; "ASR (clean model)" is the same
trigger on a model trained on clean data, i.e. how often the trigger alone sends source images to the target without
any backdoor. Settings:

* visible localised / distributed triggers: 1% of the training set poisoned (AEGIS);
* invisible static / adversarial triggers: 30% of the training set poisoned (AEGIS, after Zhong et al.);
* the RE paper's patterns A-F: 3SC attack (sources 1, 2, 3), ``--n-per-source`` images per source class;
* localised, distributed, static and adversarial again with L2 PGD adversarial training (AEGIS Table 5).

Target class 7 throughout. Usage: python benchmarks/poisoners.py [--quick] [--no-robust] [--epochs N]
[--robust-epochs N] [--n-per-source N] [--norm-bound XI]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time

import numpy as np

from art_backdoor_ext.datasets import load_dataset
from art_backdoor_ext.evaluation import Scenario, prepare_scenario
from art_backdoor_ext.metrics import attack_success_rate

TARGET = 7
SOURCES_3SC = [1, 2, 3]


def scenarios(epochs: int, robust_epochs: int, n_per_source: int, adv_kwargs: dict, robust_rows: bool = True):
    """``(label, setting, Scenario)`` for every row of the table."""
    rows = []
    visible = [("localised", "1% (all-but-target)", dict(fraction=0.01)),
               ("distributed", "1% (all-but-target)", dict(fraction=0.01))]
    invisible = [("static", "30% (all-but-target)", dict(fraction=0.30)),
                 ("adversarial", "30% (all-but-target)", dict(fraction=0.30, attack_kwargs=adv_kwargs))]
    for robust in (False, True) if robust_rows else (False,):
        for attack, setting, kw in visible + invisible:
            rows.append((attack, setting, Scenario(attack=attack, target=TARGET, robust=robust,
                                                   nb_epochs=robust_epochs if robust else epochs, **kw)))
        if not robust:
            for letter in "ABCDEF":
                rows.append((f"pattern-{letter}", f"3SC {SOURCES_3SC}, {n_per_source}/source",
                             Scenario(attack=f"pattern-{letter}", target=TARGET, sources=SOURCES_3SC,
                                      n_per_source=n_per_source, nb_epochs=epochs)))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and a smaller adversarial-trigger search")
    parser.add_argument("--epochs", type=int, default=None, help="standard training epochs (default 10; quick 5)")
    parser.add_argument("--robust-epochs", type=int, default=None, help="robust training epochs (default 5; quick 3)")
    parser.add_argument("--n-per-source", type=int, default=50, help="poisoned images per source class for A-F")
    parser.add_argument("--norm-bound", type=float, default=0.5, help="L2 radius of the adversarial trigger")
    parser.add_argument("--no-robust", action="store_true", help="skip the robust-training rows (the slow part)")
    parser.add_argument("--out", default=None, help="output prefix (default benchmarks/results/poisoners[_quick])")
    args = parser.parse_args(argv)
    epochs = args.epochs or (5 if args.quick else 10)
    robust_epochs = args.robust_epochs or (3 if args.quick else 5)
    out = args.out or ("benchmarks/results/poisoners" + ("_quick" if args.quick else "")
                        + ("_standard" if args.no_robust else ""))
    adv_kwargs = {"norm_bound": args.norm_bound, "surrogate_epochs": epochs,
                  "max_source": 200 if args.quick else 500, "max_passes": 2 if args.quick else 3}

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("benchmarks.poisoners")
    start = time.perf_counter()
    data = load_dataset("mnist-5k", channels_first=True)
    (_, _), (x_test, y_test) = data
    clean = {}
    for robust in (False, True) if not args.no_robust else (False,):  # reference models trained on clean data
        sc = Scenario(attack=None, robust=robust, nb_epochs=robust_epochs if robust else epochs)
        clean[robust] = prepare_scenario(sc, data=data)
        log.info("clean %s model: accuracy %.3f", "robust" if robust else "standard", clean[robust].clean_accuracy)

    records = []
    for label, setting, sc in scenarios(epochs, robust_epochs, args.n_per_source, adv_kwargs, not args.no_robust):
        t0 = time.perf_counter()
        ctx = prepare_scenario(sc, data=data)
        ref = clean[sc.robust].classifier
        rec = {
            "trigger": label, "setting": setting, "training": "robust (L2 PGD)" if sc.robust else "standard",
            "nb_poison": int(ctx.is_poison.sum()), "clean_accuracy": ctx.clean_accuracy, "asr": ctx.asr,
            "asr_clean_model": attack_success_rate(ref, x_test, y_test, ctx.trigger, ctx.target, ctx.sources),
            "clean_model_accuracy": clean[sc.robust].clean_accuracy,
            "pattern_l2": float(np.linalg.norm(getattr(ctx.trigger, "pattern", np.nan))),
            "seconds": time.perf_counter() - t0, "scenario": dataclasses.asdict(sc),
        }
        if hasattr(ctx.trigger, "fooling_rates"):
            rec["surrogate_fooling_rates"] = ctx.trigger.fooling_rates
        records.append(rec)
        log.info("%s / %s: acc %.3f, ASR %.3f (clean model %.3f), %.1fs", label, rec["training"],
                 rec["clean_accuracy"], rec["asr"], rec["asr_clean_model"], rec["seconds"])

    header = ["trigger", "setting", "training", "#poison", "clean acc", "ASR", "ASR (clean model)", "|v|_2",
              "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        l2 = "-" if label_is_visible(r["trigger"]) else f"{r['pattern_l2']:.3f}"
        lines.append(f"| {r['trigger']} | {r['setting']} | {r['training']} | {r['nb_poison']} | "
                     f"{r['clean_accuracy']:.3f} | {r['asr']:.3f} | {r['asr_clean_model']:.3f} | {l2} | "
                     f"{r['seconds']:.0f} |")
    note = (f"mnist-5k (4000 train / 1000 test), compact PyTorch CNN, target {TARGET}; standard training {epochs} "
            f"epochs, robust (L2 PGD eps 0.5) {robust_epochs} epochs; clean models: accuracy "
            f"{clean[False].clean_accuracy:.3f} (standard), "
            f"{clean[True].clean_accuracy if True in clean else float('nan'):.3f} (robust); adversarial "
            f"trigger: xi = {args.norm_bound}, surrogate {epochs} epochs, {adv_kwargs['max_source']} source images, "
            f"{adv_kwargs['max_passes']} passes. Total {time.perf_counter() - start:.0f}s.")
    table = "\n".join(lines)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".md", "w", encoding="utf-8") as f:
        f.write(f"# Poisoners benchmark{' (quick)' if args.quick else ''}\n\n{note}\n\n{table}\n")
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump({"note": note, "rows": records}, f, indent=2, default=str)
    _plot_triggers(records, data, out + ".png")
    print(note + "\n")
    print(table)
    print(f"\nResults in {out}.md / .json / .png")


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
        if r["training"] != "standard" or r["trigger"] == "adversarial":
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
