"""
Adversarial embedding benchmark (issue 16): Tan & Shokri's adaptive attacker (https://arxiv.org/abs/1905.13409)
against the defences, on identical poisoned sets.

mnist-5k, the compact CNN, a 3x3 white corner square on 5% of the training set towards class 7 (the paper's rate).
Two scenarios of the harness share the poisoned set: ``"badnets"`` (the naive backdoor, trained ``--epochs``) and
``"adversarial-embedding"`` (the same naive model, then the min-max game). For each: clean accuracy, ASR, the latent
separability of the target class (AC's adjusted Rand index, SS's remaining poison, AUROCs), the discriminator's
held-out accuracy, the defences' detection and TPR/FPR, the ASR of a model retrained on what AC and SS keep, and
seconds. The paper's Tables 4-5 are printed beside ours. Plots: latent projections of the target class (naive vs
embedded, the paper's Figure 8) and the game's losses (Figure 5).

Usage: python benchmarks/adversarial_embedding.py [--framework keras|pytorch] [--epochs N] [--defences ac ss strip]
Writes benchmarks/results/adversarial_embedding_<framework>.{json,md}, adversarial_embedding_<framework>_latents.png
and adversarial_embedding_<framework>_history.png. Run PyTorch with OMP_NUM_THREADS=1 on a loaded machine (torch's
two OpenMP threads were 10x slower than one on two busy cores).
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

PAPER_TABLE_4 = [  # model, dataset, pois left baseline, pois left embedding, ASR after retraining baseline, embedding
    ("DenseNet", "CIFAR-10", 0.017, 0.630, 0.011, 0.973),
    ("DenseNet", "GTSRB", 0.015, 0.685, 0.000, 0.899),
    ("VGG", "CIFAR-10", 0.024, 0.469, 0.015, 0.973),
    ("VGG", "GTSRB", 0.006, 0.544, 0.003, 0.903),
]
PAPER_TABLE_5 = [  # model, dataset, ARI baseline, ARI embedding, ASR after retraining baseline, embedding
    ("DenseNet", "CIFAR-10", 0.979, 0.182, 0.017, 0.764),
    ("DenseNet", "GTSRB", 0.997, 0.271, 0.000, 0.914),
    ("VGG", "CIFAR-10", 0.998, 0.000631, 0.019, 0.962),
    ("VGG", "GTSRB", 0.997, 0.642, 0.011, 0.743),
]


def separability(ctx):
    mask = ctx.y_train == TARGET
    feats = get_adapter(ctx.classifier).get_features(ctx.x_train[mask])
    return feats, ctx.is_poison[mask], latent_separability(feats, ctx.is_poison[mask]).as_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--framework", default="keras", choices=["keras", "pytorch"])
    parser.add_argument("--epochs", type=int, default=10, help="naive training epochs")
    parser.add_argument("--defences", nargs="+", default=["ac", "ss", "strip"])
    parser.add_argument("--attack-kwargs", default="{}", help="JSON keyword arguments of the embedding row")
    parser.add_argument("--render", action="store_true", help="only re-write the Markdown from the saved JSON")
    args = parser.parse_args()
    prefix = os.path.join(RESULTS, f"adversarial_embedding_{args.framework}")
    if args.render:
        with open(prefix + ".json", encoding="utf-8") as fh:
            saved = json.load(fh)
        args.epochs = saved["epochs"]
        with open(prefix + ".md", "w", encoding="utf-8") as fh:
            fh.write(render(saved["results"], args))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("art", "tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)

    common = dict(dataset="mnist-5k", target=TARGET, fraction=0.05, framework=args.framework, nb_epochs=args.epochs)
    scenarios = {"naive": Scenario(attack="badnets", **common),
                 "embedded": Scenario(attack="adversarial-embedding", attack_kwargs=json.loads(args.attack_kwargs),
                                      **common)}
    retrain = [d for d in ("ac", "ss") if d in args.defences]
    out, feats = {}, {}
    for key, sc in scenarios.items():
        start = time.perf_counter()
        ctx = prepare_scenario(sc)
        f, b, sep = separability(ctx)
        feats[key] = (f, b)
        rows = run_defences(ctx, args.defences, retrain=retrain)
        out[key] = {"scenario": sc.name, "clean_accuracy": ctx.clean_accuracy, "asr": ctx.asr,
                    "train_seconds": ctx.train_seconds, "separability": sep,
                    "attack_info": {k: v for k, v in ctx.attack_info.items() if k != "history"},
                    "history": ctx.attack_info.get("history"),
                    "rows": [r.as_dict() for r in rows], "seconds": time.perf_counter() - start}
        assert np.array_equal(b, feats["naive"][1]), "the two scenarios must share the poisoned set"

    os.makedirs(RESULTS, exist_ok=True)
    with open(prefix + ".json", "w", encoding="utf-8") as fh:
        json.dump({"framework": args.framework, "epochs": args.epochs, "results": out,
                   "paper_table_4": PAPER_TABLE_4, "paper_table_5": PAPER_TABLE_5}, fh, indent=2, default=float)
    with open(prefix + ".md", "w", encoding="utf-8") as fh:
        fh.write(render(out, args))
    print(render(out, args))

    import matplotlib

    matplotlib.use("Agg")
    from art_backdoor_ext.plotting import plot_embedding_history, plot_latent_projection

    fig = plot_latent_projection([("naive backdoor", feats["naive"][0]), ("adversarial embedding",
                                                                          feats["embedded"][0])], feats["naive"][1])
    fig.savefig(prefix + "_latents.png", dpi=110)
    if out["embedded"]["history"]:
        fig = plot_embedding_history(out["embedded"]["history"])
        fig.savefig(prefix + "_history.png", dpi=110)


def render(out, args) -> str:
    f = format_value
    naive, emb = out["naive"], out["embedded"]
    info = emb["attack_info"]
    lines = [f"# Adversarial embedding vs the defences ({args.framework}, mnist-5k, compact CNN)", "",
             f"3x3 corner square, 5% of the training set to class {TARGET}; naive model {args.epochs} epochs; "
             "the embedded model continues from the same naive model (same poisoned set). Measured under load "
             "(2 shared cores).", "",
             "## The attacked models", "",
             "| model | clean acc | ASR | AC ARI (target class) | SS poison left | SS AUROC | linear-probe AUROC | "
             "D held-out acc | training s (all) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in (("naive", naive), ("embedded", emb)):
        s = r["separability"]
        d_acc = info.get("final_val_d_acc") if name == "embedded" else None
        secs = r["train_seconds"]
        lines.append(f"| {name} | {f(r['clean_accuracy'])} | {f(r['asr'])} | {f(s['ari'])} | {f(s['ss_remaining'])} "
                     f"| {f(s['ss_auroc'])} | {f(s['probe_auroc'])} | {f(d_acc)} | {f(secs, 1)} |")
    if info:
        ratio = info["attack_seconds"] / info["naive_seconds"]
        lines += ["", f"The game took {info['attack_seconds']:.1f} s after {info['naive_seconds']:.1f} s of naive "
                  f"training: **{ratio:.2f}x** the naive training time (target: <= 3x)."]
    lines += ["", "## Defences", "",
              "| model | defence | detected | target | TPR | FPR (target) | acc after | ASR after | seconds |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, r in (("naive", naive), ("embedded", emb)):
        for row in r["rows"]:
            lines.append(f"| {name} | {row['defence']} | {f(row['detected'])} | {f(row['target_class'])} | "
                         f"{f(row['tpr'])} | {f(row['fpr_target'])} | {f(row['clean_accuracy'])} | {f(row['asr'])} "
                         f"| {f(row['seconds'], 1)} |")
    lines += ["", "## The paper's numbers (Tan & Shokri, Tables 4-5; CIFAR-10 / GTSRB, DenseNet / VGG)", "",
              "| model | data | SS poison left (baseline) | SS poison left (embedding) | ASR after SS (baseline) | "
              "ASR after SS (embedding) |", "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {d} | {a:.3f} | {b:.3f} | {c:.3f} | {e:.3f} |" for m, d, a, b, c, e in PAPER_TABLE_4]
    lines += ["", "| model | data | AC ARI (baseline) | AC ARI (embedding) | ASR after AC (baseline) | "
              "ASR after AC (embedding) |", "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {d} | {a:.4g} | {b:.4g} | {c:.3f} | {e:.3f} |" for m, d, a, b, c, e in PAPER_TABLE_5]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
