"""
The first comparison (``make demo``): a BadNets-style localised trigger through ART's ``PoisoningAttackBackdoor`` on
the bundled MNIST subset, a PyTorch reference CNN, and every registered defence side by side.

Usage: python benchmarks/demo.py [--defences ac ss ...] [--fraction 0.05] [--out benchmarks/results/demo]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time

from art_backdoor_ext.evaluation import Scenario, format_table, run_scenario, save_results

DEFAULT_DEFENCES = ["ac", "ss", "strip", "re", "ci", "fine-pruning"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--attack", default="badnets")
    parser.add_argument("--defences", nargs="+", default=DEFAULT_DEFENCES)
    parser.add_argument("--fraction", type=float, default=0.05, help="fraction of the training set poisoned")
    parser.add_argument("--target", type=int, default=7)
    parser.add_argument("--framework", default="pytorch", choices=["pytorch", "keras"])
    parser.add_argument("--width", default="compact", choices=["compact", "wide"])
    parser.add_argument("--robust", action="store_true", help="L2 PGD adversarial training")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/demo")
    parser.add_argument("--aegis", action="store_true",
                        help="also train an L2-robust model on the same poisoned data and run AEGIS on it")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    start = time.perf_counter()
    scenario = Scenario(dataset="mnist-5k", attack=args.attack, target=args.target, fraction=args.fraction,
                        framework=args.framework, width=args.width, robust=args.robust, nb_epochs=args.epochs,
                        seed=args.seed)
    results = [run_scenario(scenario, defences=args.defences, verbose=True)]
    if args.aegis:
        robust = dataclasses.replace(scenario, robust=True, nb_epochs=5, robust_kwargs={"max_iter": 5})
        results.append(run_scenario(robust, defences=["aegis"], verbose=True,
                                    defence_kwargs={"aegis": {"nb_seeds": 100, "max_train_per_class": 200}}))
    result = results[0]
    table = format_table(results)
    save_results(results, args.out)
    print(f"\nScenario {scenario.name}: ", end="")
    print(f"clean accuracy {result.clean_accuracy:.3f}, ASR {result.asr:.3f}, trained in {result.train_seconds:.1f}s\n")
    print(table)
    print(f"\nTotal {time.perf_counter() - start:.1f}s; results in {args.out}.json / .md")


if __name__ == "__main__":
    main()
