"""
Can the adversarial embedding game fool its own discriminator? (issue 16: "D's accuracy on held-out latents ends near
chance").

One naive backdoor (mnist-5k, PyTorch compact CNN, 3x3 corner square on 5% of the training set to class 7, 10
epochs), then the game from that same naive model under several settings: lambda, the number of game epochs, the
classifier's learning rate, D's learning rate and steps, the objective and D's reference set. For each: D's balanced
accuracy on held-out latents after every epoch (triggered test images of the source classes vs clean test images of
the target class), and the embedded model's clean accuracy, ASR, AC's adjusted Rand index on the target class and a
linear probe's AUROC.

Usage: python benchmarks/adversarial_embedding_sweep.py [--add JSON_LIST]
Writes benchmarks/results/adversarial_embedding_sweep.{json,md}; ``--add '[{"mmd": 10, "nb_epochs": 20}]'`` runs only
those settings (from the same naive model) and appends them to the existing table.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

from art_backdoor_ext.attacks.poisoning import AdversarialBackdoorEmbedding, localised_trigger
from art_backdoor_ext.datasets import load_dataset
from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.evaluation.api import format_value
from art_backdoor_ext.metrics import accuracy, attack_success_rate, latent_separability
from art_backdoor_ext.models import make_classifier

TARGET = 7
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CONFIGS = [
    {"nb_epochs": 5, "regularization": 0.3},  # the default
    {"nb_epochs": 10, "regularization": 1.0},
    {"nb_epochs": 10, "regularization": 3.0},
    {"nb_epochs": 30, "regularization": 1.0},
    {"nb_epochs": 10, "regularization": 1.0, "objective": "paper"},
    {"nb_epochs": 10, "regularization": 1.0, "d_steps": 5},
    {"nb_epochs": 10, "regularization": 1.0, "reference": "all"},
    {"nb_epochs": 10, "regularization": 1.0, "learning_rate": 1e-3},
    {"nb_epochs": 10, "regularization": 1.0, "learning_rate_d": 1e-4},
    {"nb_epochs": 10, "regularization": 1.0, "objective": "flip", "learning_rate": 1e-3},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--add", default=None, help="JSON list of settings to run and append to the existing table")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    prefix = os.path.join(RESULTS, "adversarial_embedding_sweep")
    configs = CONFIGS if args.add is None else json.loads(args.add)
    (x, y), (xt, yt) = load_dataset("mnist-5k")
    clf = make_classifier("pytorch", nb_classes=10, input_shape=x.shape[1:], seed=0)
    trigger = localised_trigger(size=3)
    base = AdversarialBackdoorEmbedding(clf, trigger, TARGET, fraction=0.05, pretrain_epochs=10, nb_epochs=1, seed=0)
    base.poison_estimator(x, y)
    naive = base.naive_classifier_
    xp, yp, is_poison = base.get_training_data()

    def stats(model):
        mask = yp == TARGET
        sep = latent_separability(get_adapter(model).get_features(xp[mask]), is_poison[mask]).as_dict()
        return {"accuracy": accuracy(model, xt, yt), "asr": attack_success_rate(model, xt, yt, trigger, TARGET),
                "ari": sep["ari"], "probe_auroc": sep["probe_auroc"]}

    rows = [{"config": "naive", **stats(naive), "val_d_acc": [], "seconds": None}]
    if args.add is not None:
        with open(prefix + ".json", encoding="utf-8") as fh:
            rows = json.load(fh)
    for kw in configs:
        attack = AdversarialBackdoorEmbedding(naive, trigger, TARGET, pretrain_epochs=0, seed=0, **kw)
        start = time.perf_counter()
        model = attack.embed(xp, yp, is_poison, x_val=xt, y_val=yt)
        rows.append({"config": kw, **stats(model), "val_d_acc": attack.history_["val_d_acc"],
                     "seconds": time.perf_counter() - start})
        logging.warning("%s: %s", kw, {k: v for k, v in rows[-1].items() if k != "config"})
    with open(prefix + ".json", "w", encoding="utf-8") as fh:
        json.dump(rows, fh, indent=1, default=float)
    with open(prefix + ".md", "w", encoding="utf-8") as fh:
        fh.write(render(rows))


def render(rows) -> str:
    f = format_value
    lines = ["# Does the game fool its discriminator? (PyTorch compact CNN, mnist-5k)", "",
             "Written by `benchmarks/adversarial_embedding_sweep.py`: one naive model (10 epochs), then the game "
             "from it under each setting (defaults otherwise: confusion objective, Adam 1e-4 / 1e-3, one D step, "
             "reference = clean target-class images, no MMD penalty unless `mmd` is given). D's held-out balanced accuracy: last epoch, and the lowest over "
             "the epochs. Measured on 2 shared cores.", "",
             "| setting | D held-out (last) | D held-out (min) | clean acc | ASR | AC ARI | probe AUROC | game s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["config"] if isinstance(r["config"], str) else ", ".join(f"{k}={v}" for k, v in r["config"].items())
        d = r["val_d_acc"]
        lines.append(f"| {name} | {f(d[-1] if d else None)} | {f(min(d) if d else None)} | {f(r['accuracy'])} | "
                     f"{f(r['asr'])} | {f(r['ari'])} | {f(r['probe_auroc'])} | {f(r['seconds'], 1)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
