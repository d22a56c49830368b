"""
Speed-up of the grid's Ray backend over the local one on this machine, and Ray's scheduling overhead per task.

A 4-task grid (one attack, 4 seeds, one defence: 4 scenarios, each a Ray task) runs from an empty cache on ``local``
and on ``ray`` (a local Ray with ``--workers`` CPUs); then Ray's start-up time and the round trip of an empty task are
measured. Writes ``benchmarks/results/grid_ray_speedup.{json,md}``. Timings depend on the machine's load: ``uptime``'s
load average is recorded with them.

    python benchmarks/grid_ray_speedup.py [--workers 2] [--epochs 6] [--dataset digits]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from art_backdoor_ext.grid import run_grid  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _noop():
    return None


def ray_overhead(workers: int, nb_tasks: int = 200) -> dict:
    """Ray's start-up time, and the latency of an empty task (one at a time) and its throughput (all at once)."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
    startup = time.perf_counter() - start
    try:
        remote = ray.remote(num_cpus=1)(_noop)
        ray.get(remote.remote())  # warm a worker
        start = time.perf_counter()
        for _ in range(20):
            ray.get(remote.remote())
        latency = (time.perf_counter() - start) / 20
        start = time.perf_counter()
        ray.get([remote.remote() for _ in range(nb_tasks)])
        throughput_per_task = (time.perf_counter() - start) / nb_tasks
    finally:
        ray.shutdown()
    return {"ray_init_seconds": startup, "empty_task_round_trip_seconds": latency,
            "empty_task_seconds_in_batch": throughput_per_task}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--out", default=os.path.join(RESULTS, "grid_ray_speedup"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    spec = {"name": "speedup", "dataset": args.dataset, "nb_epochs": args.epochs, "seeds": 4,
            "attacks": [{"attack": "localised", "target": 1, "sources": [2, 3], "n_per_source": 40}],
            "defences": {"ac": {}}}
    load_before = os.getloadavg()
    import torch

    from art_backdoor_ext.datasets import load_dataset
    from art_backdoor_ext.evaluation import prepare_scenario  # noqa: F401  (warm-up: imports and dataset files, so
    from art_backdoor_ext.models import make_classifier      # the first timed run pays no more than the others)

    load_dataset(args.dataset)
    make_classifier("pytorch", input_shape=(1, 8, 8), nb_epochs=0)
    walls, tables = {}, {}
    default_threads = torch.get_num_threads()
    # "local": torch's default intra-op threads; "local-1thread": one thread, as each Ray worker has (OMP_NUM_THREADS=1)
    for run, backend, threads in (("local", "local", default_threads), ("local-1thread", "local", 1),
                                  ("ray", "ray", default_threads)):
        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as cache:
            kwargs = {"workers": args.workers} if backend == "ray" else {}
            start = time.perf_counter()
            result = run_grid(spec, cache=cache, backend=backend, verbose=False, plot=False, **kwargs)
            walls[run] = time.perf_counter() - start
            tables[run] = result.table()
    torch.set_num_threads(default_threads)
    overhead = ray_overhead(args.workers)
    out = {"spec": spec, "workers": args.workers, "cpus": os.cpu_count(), "load_average_before": load_before,
           "load_average_after": os.getloadavg(), "wall_seconds": walls,
           "torch_default_threads": default_threads, "speedup": walls["local"] / walls["ray"],
           "speedup_vs_1thread": walls["local-1thread"] / walls["ray"],
           "identical_tables": len(set(tables.values())) == 1, **overhead}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    loaded = max(load_before[0], out["load_average_after"][0]) > 0.5 * (os.cpu_count() or 1)
    lines = [f"# Grid: Ray backend vs local ({args.workers} Ray CPUs, {os.cpu_count()} cores"
             f"{', measured under load' if loaded else ''})", "",
             f"4-task grid ({args.dataset}, {args.epochs} epochs, 4 seeds, localised 2SC, AC), empty cache.", "",
             "| what | value |", "|---|---|",
             f"| local wall time (torch default, {default_threads} threads) | {walls['local']:.1f} s |",
             f"| local wall time (1 thread) | {walls['local-1thread']:.1f} s |",
             f"| ray wall time ({args.workers} workers, 1 thread each) | {walls['ray']:.1f} s |",
             f"| speed-up over local ({default_threads} threads) | {out['speedup']:.2f}x |",
             f"| speed-up over local (1 thread) | {out['speedup_vs_1thread']:.2f}x |",
             f"| identical tables (all three runs) | {out['identical_tables']} |",
             f"| ray.init | {overhead['ray_init_seconds']:.2f} s |",
             f"| empty task round trip | {1000 * overhead['empty_task_round_trip_seconds']:.1f} ms |",
             f"| empty task in a batch of 200 | {1000 * overhead['empty_task_seconds_in_batch']:.1f} ms |",
             f"| load average (1 min) before / after | {load_before[0]:.1f} / {out['load_average_after'][0]:.1f} |"]
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
