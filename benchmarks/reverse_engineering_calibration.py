"""
Calibration of the RE defence's decision rule and cleansing over training seeds (issue 15): false alarms on clean
models, detection with the right target on backdoored ones, and cleansing TPR / FPR, for the previous default rule, the
paper's rule and the current default, all on the *same* estimated patterns of each model.

Rules (see :class:`~art_backdoor_ext.defences.detector.poison.ReverseEngineeringDefence`):

* ``old``: per-source normalisation of the reciprocal statistics, Gamma test alone, Eq. (12) cleansing
  (``normalize_sources=True, max_norm_ratio=None, cleansing="paper"``; the default before issue 15);
* ``paper``: the paper's rule (``normalize_sources=False, max_norm_ratio=None, cleansing="paper"``);
* ``new``: the current defaults (Gamma test on normalised statistics *and* the effect-size condition
  ``max_norm_ratio``; scaled cleansing; cleansing sanity check).

Scenarios (mnist-5k, PyTorch, 15 epochs): clean models (compact and wide CNN), the RE paper's MNIST chessboard patch
(``chessboard-patch``) and pattern C, 3SC (sources 1, 2, 3, 60 images each, as in the tests), the image-wide 8/255
chessboard (pattern A, 3SC, 150 per source) and the visible BadNets square of ``make demo``.

Training and pattern estimation dominate the cost (a compact model: ~30 s training + ~25-40 s estimation on two CPU
cores; wide: ~6x), so with ``--cache DIR`` trained models (state dicts), poisoned sets and estimated patterns are kept
on disk and a second run only re-evaluates the rules.

Usage: python benchmarks/reverse_engineering_calibration.py [--seeds 100 ... 109] [--wide-seeds 100 ... 104]
       [--suites clean chess-patch pattern-C ...] [--cache DIR] [--threads 1]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
import warnings

import numpy as np

from art_backdoor_ext.evaluation import Scenario, format_value, prepare_scenario

logger = logging.getLogger("re_calibration")

RULES = {
    "old": dict(normalize_sources=True, max_norm_ratio=None, cleansing="paper", min_relative_margin=None),
    "paper": dict(normalize_sources=False, max_norm_ratio=None, cleansing="paper", min_relative_margin=None),
    "new": {},  # the defaults
}


def suite_scenario(suite: str, seed: int, width: str = "compact") -> Scenario:
    """The scenario of one suite and training seed."""
    common = dict(dataset="mnist-5k", width=width, nb_epochs=15, seed=seed)
    if suite == "clean":
        return Scenario(attack=None, **common)
    if suite in ("chess-patch", "pattern-C"):
        attack = "chessboard-patch" if suite == "chess-patch" else "pattern-C"
        return Scenario(attack=attack, target=7, sources=[1, 2, 3], n_per_source=60, **common)
    if suite == "chess-wide":
        return Scenario(attack="pattern-A", target=7, sources=[1, 2, 3], n_per_source=150,
                        attack_kwargs={"magnitude": 8 / 255}, **common)
    if suite == "badnets":  # `make demo`
        return Scenario(attack="badnets", target=7, fraction=0.05, **{**common, "nb_epochs": 10})
    raise ValueError(f"Unknown suite {suite!r}.")


def cache_key(sc: Scenario) -> str:
    digest = hashlib.md5(json.dumps(dataclasses.asdict(sc), sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{sc.attack or 'clean'}_{sc.width}_s{sc.seed}_e{sc.nb_epochs}_{digest}"


def load_or_train(sc: Scenario, cache: str = None):
    """``(data, classifier)``: data holds the poisoned training set, ``is_poison``, accuracy, ASR and target."""
    import torch

    from art_backdoor_ext.models import make_classifier

    path = os.path.join(cache, cache_key(sc)) if cache else None
    if path and os.path.exists(path + "_model.pt"):
        arrays = np.load(path + "_data.npz")
        with open(path + "_meta.json", encoding="utf-8") as f:
            meta = json.load(f)
        clf = make_classifier(sc.framework, nb_classes=10, width=sc.width, input_shape=arrays["x"].shape[1:],
                              nb_epochs=0, seed=sc.seed)
        clf.model.load_state_dict(torch.load(path + "_model.pt"))
        return dict(x=arrays["x"], y=arrays["y"], is_poison=arrays["is_poison"], **meta), clf
    start = time.perf_counter()
    ctx = prepare_scenario(sc)
    meta = dict(acc=ctx.clean_accuracy, asr=ctx.asr, target=ctx.target, sources=ctx.sources,
                train_s=time.perf_counter() - start, load=os.getloadavg()[0], scenario=dataclasses.asdict(sc))
    if path:
        torch.save(ctx.classifier.model.state_dict(), path + "_model.pt")
        np.savez_compressed(path + "_data.npz", x=ctx.x_train, y=ctx.y_train, is_poison=ctx.is_poison)
        with open(path + "_meta.json", "w", encoding="utf-8") as f:
            json.dump(meta, f)
    return dict(x=ctx.x_train, y=ctx.y_train, is_poison=ctx.is_poison, **meta), ctx.classifier


def defence_for(sc: Scenario, cache: str = None):
    """A defence whose pattern estimation is done (or loaded from the cache), and the scenario's data."""
    from art_backdoor_ext.defences.detector.poison import ReverseEngineeringDefence
    from art_backdoor_ext.defences.detector.poison import reverse_engineering as module

    data, clf = load_or_train(sc, cache)
    defence = ReverseEngineeringDefence(clf, data["x"], data["y"])
    path = os.path.join(cache, cache_key(sc) + "_re.npz") if cache else None
    if path and os.path.exists(path):
        est = np.load(path)
        key = tuple(id(clf) if name == "classifier" else getattr(defence, name) for name in module._ESTIMATION_PARAMS)
        info = {"converged": est["converged"], "rho": est["rho"], "iterations": np.zeros(est["norms"].shape, np.int64),
                "nb_steps": 0}
        defence._estimate_cache = (key, est["patterns"], info, float(est["seconds_estimation"]))
        data["estimation_load"] = float(est["load"])
    else:
        report, is_clean = defence.detect_poison()
        data["estimation_load"] = os.getloadavg()[0]
        if path:
            np.savez_compressed(path, patterns=report["patterns"], norms=report["norms"],
                                converged=report["converged"], rho=report["misclassification_fraction"],
                                seconds_estimation=report["seconds_estimation"], load=data["estimation_load"],
                                is_clean=np.asarray(is_clean))
    return defence, data


def evaluate(suite: str, sc: Scenario, cache: str = None):
    """One row per rule on the same patterns."""
    from art_backdoor_ext.metrics import filtering_rates

    defence, data = defence_for(sc, cache)
    rows = []
    for rule, kwargs in RULES.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report, is_clean = defence.detect_poison(**{**_defaults(), **kwargs})
        row = dict(suite=suite, width=sc.width, seed=sc.seed, rule=rule, acc=data["acc"], asr=data["asr"],
                   true_target=data["target"], detected=report["detected"], target=report["target_class"],
                   source=report["source_class"], p_value=report["p_value"],
                   min_norm_ratio=min(report["norm_ratios"].values()),
                   target_norm_ratio=(report["norm_ratios"].get(data["target"]) if data["target"] is not None
                                      else None),
                   seconds_estimation=report["seconds_estimation"], estimation_load=data["estimation_load"],
                   tpr=None, fpr_target=None, cleansing_scale=report["cleansing_scale"],
                   cleansing_reliable=report["cleansing_reliable"], relative_margin=report["relative_margin"],
                   warned=any(issubclass(w.category, UserWarning) for w in caught))
        if sc.poisoned and report["detected"]:
            rates = filtering_rates(is_clean, data["is_poison"], data["y"], data["target"])
            row.update(tpr=rates.tpr, fpr_target=rates.fpr_target)
        rows.append(row)
    return rows


def _defaults():
    """The constructor defaults of every inference / cleansing parameter (so each rule starts from them)."""
    return dict(normalize_sources=True, max_norm_ratio=0.3, cleansing="scaled", cleansing_fraction=0.25,
                min_relative_margin=0.5, theta=0.05)


def summary(rows) -> str:
    header = ["suite", "width", "rule", "models", "detected", "right target", "mean TPR", "min TPR",
              "mean FPR (target)", "max FPR (target)", "unreliable-cleansing warnings", "seeds detected"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups = []
    for r in rows:
        g = (r["suite"], r["width"], r["rule"])
        if g not in groups:
            groups.append(g)
    for suite, width, rule in groups:
        sel = [r for r in rows if (r["suite"], r["width"], r["rule"]) == (suite, width, rule)]
        det = [r for r in sel if r["detected"]]
        right = [r for r in det if r["true_target"] is not None and r["target"] == r["true_target"]]
        tpr = [r["tpr"] for r in det if r["tpr"] is not None]
        fpr = [r["fpr_target"] for r in det if r["fpr_target"] is not None]
        cells = [suite, width, rule, len(sel), f"{len(det)}/{len(sel)}",
                 "-" if suite == "clean" else f"{len(right)}/{len(sel)}",
                 np.mean(tpr) if tpr else None, min(tpr) if tpr else None, np.mean(fpr) if fpr else None,
                 max(fpr) if fpr else None, sum(r["warned"] for r in sel),
                 " ".join(f"{r['seed']}({r['target']})" for r in det)]
        lines.append("| " + " | ".join(format_value(c, 3) for c in cells) + " |")
    return "\n".join(lines)


def ratio_table(rows) -> str:
    """The effect-size statistic: smallest pattern norm over its source's median, per model (rule-independent)."""
    header = ["suite", "width", "models", "min ratio (clean: any target; backdoor: true target)", "max", "values"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups = []
    for r in rows:
        if r["rule"] == "new" and (r["suite"], r["width"]) not in groups:
            groups.append((r["suite"], r["width"]))
    for suite, width in groups:
        sel = [r for r in rows if r["rule"] == "new" and (r["suite"], r["width"]) == (suite, width)]
        vals = [r["min_norm_ratio"] if r["true_target"] is None else r["target_norm_ratio"] for r in sel]
        lines.append("| " + " | ".join([suite, width, str(len(sel)), format_value(min(vals), 3),
                                        format_value(max(vals), 3), " ".join(f"{v:.3f}" for v in vals)]) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--suites", nargs="+", default=["clean", "chess-patch", "pattern-C", "chess-wide", "badnets"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(100, 110)))
    parser.add_argument("--wide-suites", nargs="+", default=["clean", "chess-patch", "pattern-C"])
    parser.add_argument("--wide-seeds", nargs="*", type=int, default=list(range(100, 105)))
    parser.add_argument("--chess-wide-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--cache", default=None, help="directory for trained models and estimated patterns")
    parser.add_argument("--cached-only", action="store_true", help="skip scenarios not in the cache")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/results/reverse_engineering_calibration")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("art_backdoor_ext").setLevel(logging.WARNING)
    logging.getLogger("art").setLevel(logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    plan = []
    for suite in args.suites:
        seeds = args.chess_wide_seeds if suite == "chess-wide" else [0] if suite == "badnets" else args.seeds
        plan += [(suite, suite_scenario(suite, s)) for s in seeds]
    for suite in args.wide_suites:
        plan += [(suite, suite_scenario(suite, s, "wide")) for s in args.wide_seeds or []]
    start = time.perf_counter()
    rows = []
    for suite, sc in plan:
        cached = args.cache and os.path.exists(os.path.join(args.cache, cache_key(sc) + "_re.npz"))
        if args.cached_only and not cached:
            continue
        rows += evaluate(suite, sc, args.cache)
        new = rows[-1]
        logger.info("%s %s seed %d: ASR %.2f, new rule detected=%s target=%s ratio=%.3f TPR=%s", suite, sc.width,
                    sc.seed, new["asr"], new["detected"], new["target"], new["min_norm_ratio"], new["tpr"])
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump({"rows": rows, "threads": args.threads, "seconds": time.perf_counter() - start,
                   "load_average_end": os.getloadavg()}, f, indent=1, default=float)
    timing = []
    for width in ("compact", "wide"):
        sel = [r for r in rows if r["rule"] == "new" and r["width"] == width]
        if sel:
            median = np.median([r["seconds_estimation"] for r in sel])
            timing.append(f"{width}: median pattern estimation {median:.0f} s "
                          f"over {len(sel)} models, at a mean 1-minute load average of "
                          f"{np.mean([r['estimation_load'] for r in sel]):.1f} on the machine (measured under load "
                          "when above the core count)")
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write("## Decision rules and cleansing over training seeds\n\n"
                "mnist-5k, PyTorch, 15 epochs; rules on the same estimated patterns of each model (`old`: "
                "normalised Gamma test + Eq. 12; `paper`: the paper's test + Eq. 12; `new`: the defaults). TPR / FPR "
                "(target) over the detections of each row.\n\n" + summary(rows) + "\n\n"
                "## Effect size (smallest pattern norm / its source's median)\n\n" + ratio_table(rows) + "\n\n"
                + "\n".join(f"- {t}" for t in timing) + "\n")
    print(summary(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
