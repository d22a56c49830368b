"""
The defence x attack matrix for Tan & Shokri's adaptive attackers (issue 16, https://arxiv.org/abs/1905.13409).

mnist-5k, the compact CNN, 5% of the training set poisoned towards class 7 from every other class, with the BadNets
3x3 white corner square and (``--triggers``) the RE paper's imperceptible MNIST chessboard patch (6x6, 25/255). For
each trigger, three scenarios of the harness share the poisoned set and the naive model:

* ``naive``: the plain backdoor (``--epochs`` of ordinary training);
* ``adversarial``: the naive model, then the min-max game against a latent discriminator (``"adversarial-embedding"``);
* ``targeted``: the naive model, then the targeted embedding against pruning (``"targeted-embedding"``, Eq. 4).

Every defence runs on every model: ART's Activation Clustering and Spectral Signatures, STRIP, the RE defence, cluster
impurity, fine-pruning (default) and the pruning step alone (full curve, for the paper's Figure 4); the filters'
"after" columns are a model retrained on what they keep. With ``--robust`` the naive and adversarial scenarios are
also run on adversarially trained models, with AEGIS (which only applies to robust models) and AC.

Usage: python benchmarks/adaptive_attacks.py [--framework pytorch|keras] [--triggers badnets chessboard-patch]
       [--robust] [--render]
Writes benchmarks/results/adaptive_attacks_<framework>.{json,md} and adaptive_attacks_<framework>_pruning.png.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.evaluation import Scenario, prepare_scenario, run_defences
from art_backdoor_ext.evaluation.api import format_value
from art_backdoor_ext.metrics import latent_separability

TARGET = 7
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DEFENCES = ["ac", "ss", "strip", "re", "ci", "fine-pruning", "prune-only"]
FILTERS = ["ac", "ss", "re", "ci"]
ATTACKS = {"naive": None, "adversarial": "adversarial-embedding", "targeted": "targeted-embedding"}

# Tan & Shokri, Tables 4-5 (CIFAR-10 / GTSRB): (model, data, baseline, embedding) for SS poison left, AC ARI and the
# ASR after retraining on what each keeps
PAPER = [
    ("DenseNet", "CIFAR-10", 0.017, 0.630, 0.011, 0.973, 0.979, 0.182, 0.017, 0.764),
    ("DenseNet", "GTSRB", 0.015, 0.685, 0.000, 0.899, 0.997, 0.271, 0.000, 0.914),
    ("VGG", "CIFAR-10", 0.024, 0.469, 0.015, 0.973, 0.998, 0.000631, 0.019, 0.962),
    ("VGG", "GTSRB", 0.006, 0.544, 0.003, 0.903, 0.997, 0.642, 0.011, 0.743),
]


def scenario(trigger: str, kind: str, framework: str, epochs: int, robust: bool, seed: int = 0) -> Scenario:
    common = dict(dataset="mnist-5k", target=TARGET, fraction=0.05, framework=framework, nb_epochs=epochs,
                  robust=robust, seed=seed)
    if kind == "naive":
        return Scenario(attack=trigger, **common)
    return Scenario(attack=ATTACKS[kind], attack_kwargs={"trigger": trigger}, **common)


def run_one(sc: Scenario, defences, robust: bool):
    start = time.perf_counter()
    ctx = prepare_scenario(sc)
    mask = ctx.y_train == TARGET
    feats = get_adapter(ctx.classifier).get_features(ctx.x_train[mask])
    sep = latent_separability(feats, ctx.is_poison[mask]).as_dict()
    kwargs = {"prune-only": {"full_curve": True}}
    rows = run_defences(ctx, defences, defence_kwargs={k: v for k, v in kwargs.items() if k in defences},
                        retrain=[d for d in FILTERS if d in defences])
    out = {"scenario": sc.name, "robust": robust, "clean_accuracy": ctx.clean_accuracy, "asr": ctx.asr,
           "train_seconds": ctx.train_seconds, "separability": sep,
           "attack_info": {k: v for k, v in ctx.attack_info.items() if k != "history"},
           "history": ctx.attack_info.get("history"), "rows": [], "seconds": 0.0}
    for r in rows:
        d = r.as_dict()
        if r.defence in ("prune-only", "fine-pruning") and r.report:
            d["pruning_curve"] = r.report.get("pruning_curve")
        out["rows"].append(d)
    out["seconds"] = time.perf_counter() - start
    return out, (feats, ctx.is_poison[mask])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--framework", default="pytorch", choices=["keras", "pytorch"])
    parser.add_argument("--epochs", type=int, default=10, help="naive training epochs")
    parser.add_argument("--triggers", nargs="+", default=["badnets", "chessboard-patch"])
    parser.add_argument("--kinds", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    parser.add_argument("--defences", nargs="+", default=DEFENCES)
    parser.add_argument("--robust", action="store_true", help="also robust naive/adversarial models with AEGIS and AC")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="training seeds (keys of seeds > 0 end in /sN)")
    parser.add_argument("--out", default=None, help="result file prefix (default adaptive_attacks_<framework>)")
    parser.add_argument("--render", action="store_true", help="only re-write the Markdown and plots from the JSON")
    args = parser.parse_args()
    prefix = os.path.join(RESULTS, args.out or f"adaptive_attacks_{args.framework}")
    if args.render:
        with open(prefix + ".json", encoding="utf-8") as fh:
            saved = json.load(fh)
        write(saved, prefix)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("art", "tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)

    saved = {"framework": args.framework, "epochs": args.epochs, "results": {}, "paper": PAPER}
    if os.path.exists(prefix + ".json"):  # resume: keep finished scenarios
        with open(prefix + ".json", encoding="utf-8") as fh:
            saved["results"] = json.load(fh).get("results", {})
    jobs = [(t, k, False, s) for s in args.seeds for t in args.triggers for k in args.kinds]
    if args.robust:
        jobs += [(t, k, True, s) for s in args.seeds for t in args.triggers[:1] for k in ("naive", "adversarial")]
    for trigger, kind, robust, seed in jobs:
        key = f"{trigger}/{kind}{'/robust' if robust else ''}{f'/s{seed}' if seed else ''}"
        if key in saved["results"]:
            continue
        defences = ["aegis", "ac"] if robust else args.defences
        out, (feats, is_poison) = run_one(scenario(trigger, kind, args.framework, args.epochs, robust, seed),
                                          defences, robust)
        saved["results"][key] = out
        np.savez_compressed(os.path.join("/tmp", f"latents_{args.framework}_{key.replace('/', '_')}.npz"),
                            feats=feats, is_poison=is_poison)
        with open(prefix + ".json", "w", encoding="utf-8") as fh:
            json.dump(saved, fh, indent=1, default=float)
        logging.info("%s done in %.0fs", key, out["seconds"])
    write(saved, prefix)


def write(saved, prefix: str) -> None:
    with open(prefix + ".md", "w", encoding="utf-8") as fh:
        fh.write(render(saved))
    plot_pruning(saved, prefix + "_pruning.png")


def render(saved) -> str:
    f = format_value
    res = saved["results"]
    lines = [f"# Adaptive attacks vs the defences ({saved['framework']}, mnist-5k, compact CNN)", "",
             f"5% of the training set to class {TARGET} from every other class; naive model {saved['epochs']} epochs; "
             "the adversarial (min-max game) and targeted (Eq. 4, against pruning) embeddings continue from the same "
             "naive model on the same poisoned set. Written by `benchmarks/adaptive_attacks.py`. Timings on 2 cores "
             "shared with other jobs (loaded).", "",
             "## The attacked models", "",
             "| trigger | model | clean acc | ASR | AC ARI (target) | SS poison left | SS AUROC | probe AUROC | "
             "D held-out acc | attack s / naive s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in res.items():
        s, info = r["separability"], r["attack_info"]
        ratio = (info["attack_seconds"] / info["naive_seconds"]) if info.get("naive_seconds") else None
        trig, kind = key.split("/")[0], "/".join(key.split("/")[1:])
        lines.append(f"| {trig} | {kind} | {f(r['clean_accuracy'])} | {f(r['asr'])} | {f(s['ari'])} | "
                     f"{f(s['ss_remaining'])} | {f(s['ss_auroc'])} | {f(s['probe_auroc'])} | "
                     f"{f(info.get('final_val_d_acc'))} | {f(ratio, 2)} |")
    lines += ["", "## Defence x attack", "",
              "detected: the defence's verdict (ok = right target); TPR / FPR on the target class for the filters; "
              "acc / ASR after: a model retrained on what a filter keeps, or the repaired model of a transformer.", "",
              "| trigger | model | defence | detected | TPR | FPR (target) | acc after | ASR after | seconds | notes |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in res.items():
        trig, kind = key.split("/")[0], "/".join(key.split("/")[1:])
        for row in r["rows"]:
            det = row["detected"]
            verdict = "-" if det is None else ("no" if not det else
                                                ("ok" if row["target_class"] == TARGET else
                                                 f"wrong ({row['target_class']})"))
            notes = str(row.get("notes", ""))[:70].replace("|", "/")
            lines.append(f"| {trig} | {kind} | {row['defence']} | {verdict} | {f(row['tpr'])} | "
                         f"{f(row['fpr_target'])} | {f(row['clean_accuracy'])} | {f(row['asr'])} | "
                         f"{f(row['seconds'], 1)} | {notes} |")
    lines += ["", "## The paper's numbers (Tables 4-5: CIFAR-10 / GTSRB, DenseNet / VGG; baseline -> embedding)", "",
              "| model | data | SS poison left | ASR after SS | AC ARI | ASR after AC |", "|---|---|---|---|---|---|"]
    for m, d, sp0, sp1, sa0, sa1, ar0, ar1, aa0, aa1 in saved.get("paper", PAPER):
        lines.append(f"| {m} | {d} | {sp0:.3f} -> {sp1:.3f} | {sa0:.3f} -> {sa1:.3f} | {ar0:.3g} -> {ar1:.3g} | "
                     f"{aa0:.3f} -> {aa1:.3f} |")
    return "\n".join(lines) + "\n"


def plot_pruning(saved, path: str) -> None:
    """The paper's Figure 4: clean accuracy and ASR along the pruning sweep, naive vs targeted embedding."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for key, r in saved["results"].items():
        for row in r["rows"]:
            if row["defence"] == "prune-only" and row.get("pruning_curve") and "/s" not in key:
                curves[key] = row["pruning_curve"]
    triggers = sorted({k.split("/")[0] for k in curves})
    if not triggers:
        return
    fig, axes = plt.subplots(1, len(triggers), figsize=(5.2 * len(triggers), 3.8), squeeze=False)
    for ax, trig in zip(axes[0], triggers):
        for kind, colour in (("naive", "tab:blue"), ("adversarial", "tab:green"), ("targeted", "tab:red")):
            c = curves.get(f"{trig}/{kind}")
            if c is None:
                continue
            ax.plot(c["fraction"], c["asr"], "-", color=colour, label=f"{kind}: ASR")
            ax.plot(c["fraction"], c["accuracy"], "--", color=colour, label=f"{kind}: clean acc")
        ax.set_xlabel("fraction of the last conv layer's channels pruned")
        ax.set_ylabel("rate")
        ax.set_title(f"pruning sweep, {trig}")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
