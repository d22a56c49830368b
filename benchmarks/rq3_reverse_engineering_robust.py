"""
RQ3 of the AEGIS paper (issue 19): does reverse engineering weaken on adversarially robust models?

The same backdoor on a standard and on an L2-robust compact CNN (mnist-5k, seed 0 unless ``--seed``): the harness's
``Scenario(..., robust=True)`` trains with L2 PGD adversarial training (ART's ``AdversarialTrainer``, eps 0.5, step
0.15, 7 steps, :func:`art_backdoor_ext.models.train_robust`) for the same number of epochs as the standard model (10).
Attacks: BadNets 3x3 square, 5% of the training set to class 7 (``badnets``), and the RE paper's MNIST chessboard patch
3SC (``chessboard-patch``, sources 1, 2, 3, 50 images each).

Defences on every model: our Neural Cleanse (``nc``, its defaults: 40 epochs x 5 steps of 32 images), the RE defence
with its default rule (``re``) and the paper's rule (``re-paper``, on the same estimated patterns); on Keras models also
ART's ``NeuralCleanse`` (``norm=1``, ``steps=40`` over 160 images, i.e. the same 200 Adam steps per class as ours; with
the learning rate that ART's ``reset()`` zeroes under Keras 3 assigned back, see
``benchmarks/neural_cleanse_speed.py``).

Each model's robustness is measured as its accuracy under L2 PGD (eps 0.5, step 0.1, 20 steps) on 200 test images.
Recovered-trigger size: Neural Cleanse's mask L1 norm of class 7 against the median over classes; RE's smallest pattern
L2 norm of a pair into class 7 against the median over all pairs.

Standard models come from the grid cache (``--cache``, default ``/work/gridrun/cache``) when it holds them; robust
models are cached in ``--robust-cache`` (default ``.grid-cache/`` of the repository, git-ignored).

Usage: python benchmarks/rq3_reverse_engineering_robust.py [--attacks badnets chessboard-patch] [--seed 0]
       [--frameworks pytorch keras] [--no-art]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import warnings

import numpy as np

from art_backdoor_ext.evaluation import Scenario, prepare_scenario

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)
from neural_cleanse_speed import write_results  # noqa: E402  (a sibling benchmark script)
logger = logging.getLogger("rq3")

ATTACKS = {
    "badnets": dict(attack="badnets", fraction=0.05),
    "chessboard-patch": dict(attack="chessboard-patch", sources=[1, 2, 3], n_per_source=50),
}


class SplitStore:
    """Standard models from the shared grid cache, robust ones from a private cache (nothing written to the shared
    folder for a robust scenario)."""

    def __init__(self, shared, private):
        self.shared, self.private = shared, private

    def _pick(self, scenario):
        return self.private if (scenario.robust or self.shared is None) else self.shared

    def poisoned(self, scenario, compute):
        return self._pick(scenario).poisoned(scenario, compute)

    def model(self, ctx, compute):
        return self._pick(ctx.scenario).model(ctx, compute)


def scenario(attack: str, framework: str, robust: bool, seed: int = 0) -> Scenario:
    return Scenario(dataset="mnist-5k", target=7, framework=framework, nb_epochs=10, robust=robust, seed=seed,
                    **ATTACKS[attack])


def robust_accuracy(ctx, n: int = 200, eps: float = 0.5) -> float:
    from art.attacks.evasion import ProjectedGradientDescent

    from art_backdoor_ext.metrics import accuracy

    pgd = ProjectedGradientDescent(ctx.classifier, norm=2, eps=eps, eps_step=0.1, max_iter=20, batch_size=100,
                                   verbose=False)
    x, y = ctx.x_test[:n], ctx.y_test[:n]
    np.random.seed(0)
    return float(accuracy(ctx.classifier, pgd.generate(x.astype(np.float32)), y))


def nc_row(ctx, name: str, report: dict, seconds: float) -> dict:
    norms = np.array([report["l1_norms"][c] for c in range(ctx.nb_classes)])
    index = np.array([report["anomaly_index"][c] for c in range(ctx.nb_classes)])
    return {"defence": name, "detected": report["detected"], "target_class": report["target_class"],
            "flagged_classes": report["suspected_classes"], "anomaly_index_7": float(index[7]),
            "lowest_index": float(np.nanmin(index)) if np.isfinite(index).any() else None,
            "lowest_index_class": int(np.nanargmin(index)) if np.isfinite(index).any() else None,
            "trigger_norm_7": float(norms[7]), "median_norm": float(np.median(norms)),
            "norm_ratio_7": float(norms[7] / np.median(norms)), "p_value": None,
            "inconclusive": report.get("inconclusive"), "seconds": seconds,
            "l1_norms": norms.tolist(), "anomaly_index": index.tolist()}


def run_defences(ctx, use_art: bool) -> list:
    from art_backdoor_ext.evaluation.api import get_defence

    rows = []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report, _ = get_defence("nc").fn(ctx)
    rows.append(nc_row(ctx, "nc (ours)", report, time.perf_counter() - t0))
    logger.info("nc: %s", {k: rows[-1][k] for k in ("detected", "target_class", "anomaly_index_7", "seconds")})
    for name in ("re", "re-paper"):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report, is_clean = get_defence(name).fn(ctx)
        seconds = time.perf_counter() - t0
        norms = np.asarray(report["norms"], float)
        into7 = norms[:, 7]
        rows.append({
            "defence": name, "detected": report["detected"], "target_class": report["target_class"],
            "flagged_classes": report["suspected_classes"], "source_class": report["source_class"],
            "p_value": report["p_value"], "class_p_value_7": report["class_p_values"].get(7),
            "trigger_norm_7": float(np.nanmin(into7)), "trigger_source_7": int(np.nanargmin(into7)),
            "median_norm": float(np.nanmedian(norms)), "norm_ratio_7": float(np.nanmin(into7) / np.nanmedian(norms)),
            "inconclusive": report.get("inconclusive"), "not_converged": len(report["not_converged"]),
            "dismissed_classes": report.get("dismissed_classes"),
            "norm_ratio_rule_7": (report.get("norm_ratios") or {}).get(7),
            "nb_flagged": report["nb_flagged"], "seconds": seconds,
            "seconds_estimation": report["seconds_estimation"]})
        logger.info("%s: %s", name, {k: rows[-1][k] for k in ("detected", "target_class", "p_value", "seconds")})
    if use_art and ctx.framework == "keras":
        from neural_cleanse_speed import run_art

        a = run_art(ctx, 40, 5, 32, norm=1, restore_lr=True)
        norms = np.array(a["l1_norms"])
        index = np.array(a["anomaly_index"])
        rows.append({"defence": "ART NeuralCleanse (norm=1, lr restored)", "detected": a["detected"],
                     "target_class": a["target_class"], "flagged_classes": a["flagged_classes"],
                     "anomaly_index_7": float(index[7]), "lowest_index": float(np.min(index)),
                     "lowest_index_class": int(np.argmin(index)), "trigger_norm_7": float(norms[7]),
                     "median_norm": float(np.median(norms)), "norm_ratio_7": float(norms[7] / np.median(norms)),
                     "p_value": None, "inconclusive": None, "seconds": a["seconds"], "l1_norms": a["l1_norms"],
                     "anomaly_index": a["anomaly_index"]})
        logger.info("ART: %s", {k: rows[-1][k] for k in ("detected", "target_class", "anomaly_index_7", "seconds")})
    return rows

# written after reading the measured table (``--from-json`` puts them into the JSON and the markdown)
FINDINGS: list = [
    "Both seeds (0: rq3_reverse_engineering_robust.md, 1: rq3_reverse_engineering_robust_seed1.md; BadNets in "
    "both, the chessboard patch in seed 0 only). Robust training does make the models L2-robust: PGD-L2 accuracy "
    "0.915-0.945 against 0.855-0.895 for the standard BadNets models, and it keeps the BadNets backdoor (ASR 1.00).",
    "Our Neural Cleanse on BadNets: the target's mask stays small on every robust model (15-18 px against 18-22 px on "
    "the standard ones), but the anomaly index moves both ways: seed 0 weaker on robust (PyTorch -4.60 -> -3.11, "
    "still detected; Keras -2.56 -> -1.76, missed: the clean labels' norms spread more, MAD 16 -> 29 and 36 -> 45), "
    "seed 1 stronger (PyTorch -2.71 -> -3.44; Keras -1.27 (missed) -> -3.63). Detected on 3 of 4 robust and 3 of 4 "
    "standard BadNets models: no consistent weakening over two seeds.",
    "ART's NeuralCleanse (learning rate restored; as installed it optimises nothing) on Keras BadNets: standard models "
    "index -2.12 (seed 0, detected, 21 px mask) and -1.82 (seed 1, missed, 30 px); on both robust models its class-7 "
    "mask is *not* small (132 and 104 px against medians 106 and 98; index +0.80 and +0.42): it does not recover the "
    "trigger on a robust model, as the AEGIS paper reports for Neural Cleanse.",
    "Our RE defence does not detect the visible BadNets square on any of the 8 models, standard or robust (the "
    "paper's rule flags class 3, a wrong target, on the seed-1 standard Keras model; on the seed-0 standard PyTorch "
    "model class 7 passes the test, p = 0.0008, and the default rule dismisses it by its effect-size condition). Its "
    "evidence for class 7 weakens on the robust model in all four pairs: the smallest pattern into 7 grows "
    "(2.83 -> 4.01, 2.49 -> 3.67, 2.93 -> 3.80, 3.20 -> 4.10) and its ratio to the median pattern norm rises "
    "(0.55 -> 0.70, 0.49 -> 0.62, 0.57 -> 0.65, 0.64 -> 0.69).",
    "Chessboard patch 3SC (seed 0): RE detects both standard models (p 7e-99 and 2e-178, pattern 0.29-0.34 against "
    "a median of ~4.6); Neural Cleanse detects the Keras one (ours -2.89, ART -2.66) and misses the PyTorch one (ours "
    "-1.81). L2 adversarial training (eps 0.5) removes this low-amplitude backdoor (ASR 0.78 -> 0.04 and 0.80 -> "
    "0.09; the standard models' PGD-L2 accuracy is 0.495, the trigger being a small-L2 path to class 7), so these "
    "robust rows do not test RQ3: nothing is detected except by the paper's RE rule (class 7, p 5e-4 and 5e-9, "
    "pattern 2.48 and 1.79 against ~5.8), a trace of a backdoor that no longer works.",
    "Answer to RQ3 as measured (one to two seeds, mnist-5k compact CNN): RE's signal (pattern size of the target) "
    "weakens on robust models every time, and ART's Neural Cleanse fails on both robust Keras models; our Neural "
    "Cleanse's anomaly index does not weaken consistently (it still detects 3 of 4 robust models). More seeds are "
    "needed before a general claim.",
]


def fmt(v, d=2):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{d}g}" if abs(v) < 1e-2 and v != 0 else f"{v:.{d}f}"
    return str(v)


def to_markdown(out: dict) -> str:
    lines = ["# RQ3: reverse engineering on standard vs L2-robust models (issue 19)", "",
             out["setup"], "",
             f"Timings **{out['timing_label']}** (one-minute load average {out['load_min']:.1f}-{out['load_max']:.1f}; "
             "2 CPU cores, no GPU).", "",
             "| attack | framework | model | acc | ASR | PGD-L2 acc | defence | detected | target | flagged | "
             "anomaly idx of 7 (lowest, class) | p-value | trigger norm into 7 | median norm | ratio | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in out["models"]:
        for r in m["defences"]:
            idx = "-" if r.get("anomaly_index_7") is None else (
                f"{r['anomaly_index_7']:.2f} ({fmt(r.get('lowest_index'))}, {r.get('lowest_index_class')})")
            det = r["detected"] if not r.get("inconclusive") else f"{r['detected']} (inconclusive)"
            lines.append(
                f"| {m['attack']} | {m['framework']} | {m['model']} | {m['clean_accuracy']:.3f} | {m['asr']:.3f} | "
                f"{m['pgd_accuracy']:.3f} | {r['defence']} | {det} | {fmt(r['target_class'])} | "
                f"{r['flagged_classes']} | {idx} | {fmt(r.get('p_value'), 3)} | {r['trigger_norm_7']:.2f} | "
                f"{r['median_norm']:.2f} | {r['norm_ratio_7']:.2f} | {r['seconds']:.0f} |")
    lines += ["", "Neural Cleanse norms are mask L1 norms (pixels); RE norms are L2 norms of the estimated patterns "
                  "(smallest pair into class 7; median over all pairs). ratio = trigger norm into 7 / median norm "
                  "(small = the backdoor's target stands out).", ""]
    if out.get("findings"):
        lines += ["Findings (as measured):", ""] + [f"* {f}" for f in out["findings"]] + [""]
    inconc = [(m["attack"], m["framework"], m["model"], r["defence"], r["inconclusive"])
              for m in out["models"] for r in m["defences"] if r.get("inconclusive")]
    if inconc:
        lines += ["Inconclusive runs:", ""] + [f"* {a} / {f} / {mo} / {d}: {why}" for a, f, mo, d, why in inconc] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--attacks", nargs="+", default=["badnets", "chessboard-patch"], choices=list(ATTACKS))
    p.add_argument("--frameworks", nargs="+", default=["pytorch", "keras"], choices=["pytorch", "keras"])
    p.add_argument("--cache", default="/work/gridrun/cache")
    p.add_argument("--robust-cache", default=os.path.join(os.path.dirname(HERE), ".grid-cache"))
    p.add_argument("--no-art", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="scenario seed (data order, weights, poison choice)")
    p.add_argument("--out", default=os.path.join(RESULTS, "rq3_reverse_engineering_robust"))
    p.add_argument("--from-json", action="store_true",
                   help="only rewrite the markdown from the JSON of --out (with FINDINGS added)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.from_json:
        with open(args.out + ".json") as f:
            out = json.load(f)
        out["findings"] = FINDINGS
        write_results(args.out, out, to_markdown(out))
        return 0
    from art_backdoor_ext.grid import GridCache

    store = SplitStore(GridCache(args.cache) if args.cache else None, GridCache(args.robust_cache))
    out = {"setup": (f"mnist-5k, target 7, compact CNN, seed {args.seed}, 10 training epochs; robust = L2 PGD "
                     "adversarial training (eps 0.5, step 0.15, 7 steps, every batch adversarial) for 10 epochs. "
                     "badnets: 3x3 square, 5% of the training set; chessboard-patch: the RE paper's MNIST chessboard "
                     "patch, 3SC "
                     "(sources 1, 2, 3, 50 images each). PGD-L2 acc: accuracy under L2 PGD eps 0.5 (20 steps) on 200 "
                     "test images. nc / ART: 200 Adam steps of 32 images per class; re / re-paper: defaults, one "
                     "pattern estimation shared by both rules."),
           "models": [], "loads": []}
    out["loads"].append(os.getloadavg()[0])
    for attack in args.attacks:
        for framework in args.frameworks:
            for robust in (False, True):
                sc = scenario(attack, framework, robust, args.seed)
                t0 = time.perf_counter()
                ctx = prepare_scenario(sc, store=store)
                load_seconds = time.perf_counter() - t0
                model = {"attack": attack, "framework": framework, "model": "robust" if robust else "standard",
                         "scenario": sc.name, "clean_accuracy": ctx.clean_accuracy, "asr": ctx.asr,
                         "nb_poison": int(ctx.is_poison.sum()), "train_seconds": ctx.train_seconds,
                         "prepare_seconds": load_seconds}
                model["pgd_accuracy"] = robust_accuracy(ctx)
                logger.info("%s: acc %.3f ASR %.3f PGD acc %.3f", sc.name, ctx.clean_accuracy, ctx.asr,
                            model["pgd_accuracy"])
                out["loads"].append(os.getloadavg()[0])
                model["defences"] = run_defences(ctx, not args.no_art)
                out["loads"].append(os.getloadavg()[0])
                out["models"].append(model)
                out["load_min"], out["load_max"] = min(out["loads"]), max(out["loads"])
                out["timing_label"] = "loaded" if out["load_max"] >= 1.5 else "unloaded"
                out["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
                write_results(args.out, out, to_markdown(out))
    print(to_markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
