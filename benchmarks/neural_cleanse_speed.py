"""
Speed of our Neural Cleanse against ART's on the same Keras model (issue 19), and ours on the PyTorch model.

Scenario: mnist-5k, BadNets 3x3 square, 5% of the training set relabelled to class 7, compact CNN, 10 epochs, seed 0
(``Scenario(dataset="mnist-5k", attack="badnets", target=7, fraction=0.05, framework=..., nb_epochs=10)``). The
trained models come from the grid cache (``--cache``, default ``/work/gridrun/cache``) when it holds them.

Mapping of the settings (both implement the authors' schedule; see the two implementations):

* ART's ``steps`` is a number of *epochs* over the ``x_val`` it is given, each of ``len(x_val) // batch_size``
  mini-batches, run class after class. Ours runs ``nb_epochs`` epochs of ``steps_per_epoch`` steps, all classes at
  once. ART gets ``x_val`` = ``steps_per_epoch * batch_size`` images drawn at random from the poisoned training set (the
  set ours samples its batches from) and ``steps = nb_epochs``: both then make the same number of Adam steps per class
  (``nb_epochs * steps_per_epoch``) on batches of the same size, and the cost schedule and early stop, counted in
  epochs, see the same number of steps per epoch.
* ``norm=1`` for ART (the paper's L1 regulariser; ART's default is an L2 norm of the mask), ``init_cost``,
  ``cost_multiplier``, ``patience``, ``attack_success_threshold``, ``early_stop_patience``, learning rate 0.1: equal.
* ART is given the model through its public API (``NeuralCleanse(KerasClassifier)``); ART's transformer builds its
  ``KerasNeuralCleanse`` with ``use_logits=False``, so it gets the same layers with a softmax on top (shared weights).

Differences that remain: Adam's betas (ART 0.5 / 0.9 as the authors' code, ours 0.9 / 0.999), the initial mask (ART
uniform random, ours 0.1 everywhere), the cost's start (ART starts at ``init_cost``, ours at 0 until the first success,
as the paper), ART's mask has the image's shape (channels included; MNIST has one), and ART's schedule resets the cost
to ``init_cost`` after every ``patience`` successful epochs (so it never raises the cost and never stops early), and
ART keeps one mask and pattern variable for all classes (class ``k`` starts from class ``k - 1``'s final mask; ours
starts every class afresh).

ART 1.20.1 under Keras 3 does not optimise at all: ``KerasNeuralCleanse.reset()``, called before every class, assigns
zero to every variable of the Adam optimiser, and under Keras 3 these include ``learning_rate``; every mask and pattern
stays at its random start (all ten L1 norms equal, no label flagged). The ART rows are therefore run twice: as
installed, and with the learning rate assigned back after ``reset()`` (``restore_lr``, the only change), which is the
algorithm ART means to run. The two do the same computation per step, so both time the same work.

Usage: python benchmarks/neural_cleanse_speed.py [--epochs 40] [--steps-per-epoch 5] [--cache DIR] [--no-art]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np

from art_backdoor_ext.evaluation import Scenario, prepare_scenario
from art_backdoor_ext.metrics import mad_anomaly_index

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
logger = logging.getLogger("neural_cleanse_speed")


def load_average() -> float:
    """The one-minute load average."""
    return float(os.getloadavg()[0])


def scenario(framework: str) -> Scenario:
    return Scenario(dataset="mnist-5k", attack="badnets", target=7, fraction=0.05, framework=framework, nb_epochs=10)


def open_store(path):
    if not path:
        return None
    from art_backdoor_ext.grid import GridCache

    return GridCache(path)


def run_ours(ctx, epochs: int, steps: int, batch_size: int) -> dict:
    from art_backdoor_ext.defences.detector.poison import NeuralCleanseDefence

    load0 = load_average()
    start = time.perf_counter()
    defence = NeuralCleanseDefence(ctx.classifier, ctx.x_train, ctx.y_train, nb_epochs=epochs,
                                   steps_per_epoch=steps, batch_size=batch_size, seed=0)
    report, is_clean = defence.detect_poison()
    seconds = time.perf_counter() - start
    norms = np.array([report["l1_norms"][c] for c in range(ctx.nb_classes)])
    return {
        "implementation": "ours", "framework": ctx.framework, "seconds": seconds,
        "seconds_reverse": report["seconds_reverse"], "detected": report["detected"],
        "target_class": report["target_class"], "flagged_classes": report["suspected_classes"],
        "anomaly_index": [report["anomaly_index"][c] for c in range(ctx.nb_classes)],
        "l1_norms": norms.tolist(),
        "attack_success": [report["attack_success"][c] for c in range(ctx.nb_classes)],
        "epochs_run": [report["epochs"][c] for c in range(ctx.nb_classes)],
        "steps_per_class_max": epochs * steps,
        "nb_flagged_images": report["nb_flagged"],
        "load_before": load0, "load_after": load_average(),
    }


def run_art(ctx, epochs: int, steps: int, batch_size: int, norm: int = 1, restore_lr: bool = False) -> dict:
    """
    ART's NeuralCleanse through its public API. ``restore_lr``: after ART's ``reset()`` (called at the start of every
    class) set the optimiser's learning rate back to ``learning_rate``. Under Keras 3 ART's ``reset()`` assigns zero to
    every variable of the optimiser, ``learning_rate`` included, so as installed no mask or pattern ever moves.
    """
    import keras
    from art.utils import to_categorical

    from art_backdoor_ext.estimators import get_adapter
    from art_backdoor_ext.registry.neural_cleanse import art_neural_cleanse

    rng = np.random.default_rng(0)
    idx = rng.choice(len(ctx.x_train), size=steps * batch_size, replace=False)
    x_val = ctx.x_train[idx].astype(np.float32)
    y_val = to_categorical(ctx.y_train[idx], ctx.nb_classes)
    np.random.seed(0)
    keras.utils.set_random_seed(0)
    load0 = load_average()
    start = time.perf_counter()
    twin = get_adapter(ctx.classifier).art_neural_cleanse_classifier()
    flagged, masks, per_class, nc = art_neural_cleanse(twin, x_val, y_val, nb_epochs=epochs, batch_size=batch_size,
                                                       norm=norm, restore_learning_rate=restore_lr)
    seconds = time.perf_counter() - start
    norms = np.array([float(np.sum(np.abs(masks[c]))) for c in range(ctx.nb_classes)])
    index = mad_anomaly_index(norms)
    flagged_classes = [int(c) for c, _, _ in flagged]
    target = int(min(flagged_classes, key=lambda c: norms[c])) if flagged_classes else None
    # ART's own is_clean-free report: flagged labels; the target is the flagged label with the smallest mask
    return {
        "implementation": f"ART NeuralCleanse (norm={norm}, {'lr restored' if restore_lr else 'as installed'})",
        "framework": "keras", "seconds": seconds,
        "seconds_reverse": float(sum(per_class.values())), "detected": bool(flagged_classes),
        "target_class": target, "flagged_classes": flagged_classes, "anomaly_index": index.tolist(),
        "l1_norms": norms.tolist(), "seconds_per_class": [per_class[c] for c in range(ctx.nb_classes)],
        "steps_per_class_max": epochs * (len(x_val) // batch_size), "x_val": len(x_val),
        "learning_rate_after_reset": float(nc.opt.learning_rate.numpy()),
        "load_before": load0, "load_after": load_average(),
    }


def fmt(x, d=2):
    return "-" if x is None else (f"{x:.{d}f}" if isinstance(x, float) else str(x))


def write_results(prefix: str, out: dict, markdown: str) -> None:
    """Write ``prefix.json`` (numpy values as lists) and ``prefix.md``, creating the folder."""
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    with open(prefix + ".json", "w") as f:
        json.dump(out, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    with open(prefix + ".md", "w") as f:
        f.write(markdown)


def to_markdown(out: dict) -> str:
    lines = [
        "# Neural Cleanse: ours vs ART's (issue 19)",
        "",
        f"Scenario: {out['scenario']}; models: {out['models']}. Settings: {out['settings']}. "
        f"Machine: {out['machine']}; timings **{out['timing_label']}** (one-minute load average "
        f"{out['load_min']:.1f}-{out['load_max']:.1f} during the runs; 'loaded' unless it stayed below ~1.5).",
        "",
        "| implementation | framework | seconds | reverse s | Adam steps/class (max) | detected | target | flagged | "
        "anomaly index of 7 | lowest index (class) | L1 of 7 | median L1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["runs"]:
        idx = np.array(r["anomaly_index"])
        norms = np.array(r["l1_norms"])
        low = int(np.argmin(np.nan_to_num(idx, nan=np.inf)))
        lines.append(
            f"| {r['implementation']} | {r['framework']} | {r['seconds']:.1f} | {r['seconds_reverse']:.1f} | "
            f"{r['steps_per_class_max']} | {r['detected']} | {fmt(r['target_class'])} | {r['flagged_classes']} | "
            f"{idx[7]:.2f} | {idx[low]:.2f} ({low}) | {norms[7]:.1f} | {np.median(norms):.1f} |")
    for title, key, digits in (("Per-class L1 norms of the recovered masks:", "l1_norms", 1),
                               ("Per-class anomaly index (signed; negative = smaller mask than the median):",
                                "anomaly_index", 2)):
        lines += ["", title, "", "| implementation | framework | " + " | ".join(str(c) for c in range(10)) + " |",
                  "|---|---|" + "---|" * 10]
        for r in out["runs"]:
            lines.append(f"| {r['implementation']} | {r['framework']} | "
                         + " | ".join(f"{v:.{digits}f}" for v in r[key]) + " |")
    if out.get("ratio") is not None:
        lines += ["", f"Ours / ART on the same Keras model: {out['ratio']:.2f}x the time "
                      f"(target: within 2x, i.e. <= 2.0; and under 60 s)."]
    lines += ["", "Mapping of settings and the remaining differences: see the docstring of "
                  "`benchmarks/neural_cleanse_speed.py`.", "",
              "Where they agree and why they differ:", "",
              "* ART as installed (ART 1.20.1, Keras 3) optimises nothing: its `reset()` zeroes the Adam optimiser's "
              "variables, `learning_rate` among them (`learning_rate_after_reset` in the JSON), so every mask stays at "
              "its random start, all ten L1 norms are equal, the MAD is 0 and no label is flagged. The time is the "
              "same work (the gradients are computed and applied with a zero rate).",
              "* With the learning rate assigned back, ART and ours agree on the decision: class 7 is the only "
              "flagged label, with masks of about the same size (the 3x3 trigger needs ~20 pixels of mask in both).",
              "* The anomaly indices of 7 differ because the *clean* labels' norms differ (the MAD): ART keeps one "
              "mask variable across classes (class k starts from class k-1's mask), starts the cost at init_cost, "
              "resets the cost after every 5 successful epochs (it never raises it, so its masks shrink only under "
              "the first cost) and uses Adam betas 0.5/0.9; ours starts each class at a 0.1 mask with cost 0, raises "
              "and lowers the cost as the paper does, and uses betas 0.9/0.999.",
              "* Speed: ART runs the classes one after the other, each step an eager TensorFlow call on 32 images "
              "(it also prints every step's accuracy); ours stamps the 32 images with all active classes' masks and "
              "takes one framework forward/backward pass on 320 images per step, with the mask/pattern updates in "
              "numpy. Both make the same 200 Adam steps per class here (ours may stop a class early; the JSON has "
              "`epochs_run`).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--steps-per-epoch", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cache", default="/work/gridrun/cache")
    p.add_argument("--no-art", action="store_true")
    p.add_argument("--art-norms", type=int, nargs="+", default=[1])
    p.add_argument("--out", default=os.path.join(RESULTS, "neural_cleanse_speed"))
    p.add_argument("--from-json", action="store_true", help="only rewrite the markdown from the JSON of --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.from_json:
        with open(args.out + ".json") as f:
            out = json.load(f)
        with open(args.out + ".md", "w") as f:
            f.write(to_markdown(out))
        return 0
    store = open_store(args.cache)
    runs, models = [], {}
    loads = [load_average()]
    for framework in ("keras", "pytorch"):
        ctx = prepare_scenario(scenario(framework), store=store)
        models[framework] = {"clean_accuracy": ctx.clean_accuracy, "asr": ctx.asr,
                             "nb_poison": int(ctx.is_poison.sum()), "train_seconds": ctx.train_seconds}
        logger.info("%s model: accuracy %.3f, ASR %.3f", framework, ctx.clean_accuracy, ctx.asr)
        r = run_ours(ctx, args.epochs, args.steps_per_epoch, args.batch_size)
        logger.info("ours %s: %.1fs, target %s, index7 %.2f", framework, r["seconds"], r["target_class"],
                    r["anomaly_index"][7])
        runs.append(r)
        loads += [r["load_before"], r["load_after"]]
        if framework == "keras" and not args.no_art:
            for norm, restore in [(n, r) for n in args.art_norms for r in (True, False)]:
                a = run_art(ctx, args.epochs, args.steps_per_epoch, args.batch_size, norm=norm, restore_lr=restore)
                logger.info("ART norm=%d: %.1fs, flagged %s, index7 %.2f", norm, a["seconds"], a["flagged_classes"],
                            a["anomaly_index"][7])
                runs.append(a)
                loads += [a["load_before"], a["load_after"]]
    loads.append(load_average())
    ours_k = next(r for r in runs if r["implementation"] == "ours" and r["framework"] == "keras")
    art_1 = next((r for r in runs if r["implementation"].startswith("ART (norm=1, lr restored")
                  or r["implementation"] == "ART NeuralCleanse (norm=1, lr restored)"), None)
    out = {
        "scenario": "mnist-5k, BadNets 3x3 square, 5% to class 7, compact CNN, 10 epochs, seed 0",
        "models": models,
        "settings": (f"{args.epochs} epochs x {args.steps_per_epoch} steps of {args.batch_size} images per class "
                     f"(ART: steps={args.epochs} over x_val of {args.steps_per_epoch * args.batch_size} images); "
                     "init_cost 1e-3, multiplier 1.5, patience 5, success 0.99, early-stop patience 10, lr 0.1"),
        "machine": f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, no GPU",
        "load_min": min(loads), "load_max": max(loads),
        "timing_label": "loaded" if max(loads) >= 1.5 else "unloaded",
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "ratio": ours_k["seconds"] / art_1["seconds"] if art_1 else None,
        "runs": runs,
    }
    write_results(args.out, out, to_markdown(out))
    print(to_markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
