"""
The grid's Ray backend (``pip install "art-backdoor-ext[ray]"``): each scenario with missing tasks is one Ray task with
its CPU (and, on a cluster with GPUs, GPU) request; it prepares the scenario through the cache on the worker (the model
stays there) and returns only the JSON-safe results, which the driver stores in its own cache as well (so a cluster
without a shared file system still resumes).

Without an address a local Ray is started with ``workers`` CPUs (2 by default) and shut down afterwards; with one
(``"auto"``, ``"ray://host:10001"``, ...) the grid joins that cluster and leaves it running. Seeds fix every random
draw of a task, so the tables equal the local backend's.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from art_backdoor_ext.grid.cache import GridCache
from art_backdoor_ext.grid.tasks import run_scenario_tasks

logger = logging.getLogger(__name__)

__all__ = ["run_ray", "scenario_job"]

DEFAULT_WORKERS = 2


def scenario_job(root: str, force: bool, scenario, defences) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
    """What one Ray task runs: the scenario's missing defences through the worker's cache; payloads and work counts."""
    cache = GridCache(root, force=force)
    payloads = run_scenario_tasks(scenario, defences, cache)
    return payloads, dict(cache.counts)


def _package_path() -> str:
    """The folder this copy of the package is imported from (so local workers import the same copy)."""
    import art_backdoor_ext

    return os.path.dirname(os.path.dirname(os.path.abspath(art_backdoor_ext.__file__)))


def run_ray(jobs, cache: GridCache, done: Callable[[int, Dict[str, Any]], None], workers: Optional[int] = None,
            address: Optional[str] = None, num_cpus_per_task: float = 1.0,
            num_gpus_per_task: Optional[float] = None) -> None:
    """
    Run the grid's jobs (one per scenario) as Ray tasks and call ``done(task_index, payload)`` as each finishes.

    :param workers: CPUs of the local Ray started when Ray is not initialised and no ``address`` is given (default 2);
                    ignored when joining a cluster.
    :param address: Address of an existing Ray cluster.
    :param num_gpus_per_task: GPU request of a task; default 1 when the cluster has GPUs, else 0. A task's classifier
                              runs on the GPU Ray gives it, on the CPU otherwise.
    """
    try:
        import ray
    except ImportError as err:
        raise ImportError('The ray backend needs Ray: pip install "art-backdoor-ext[ray]".') from err

    started = False
    if not ray.is_initialized():
        env = {"PYTHONPATH": os.pathsep.join([_package_path()] + [p for p in sys.path if p and os.path.isdir(p)])}
        if address is not None:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=workers or DEFAULT_WORKERS, include_dashboard=False, logging_level=logging.WARNING,
                     runtime_env={"env_vars": env})
        started = True
    elif address is not None or workers is not None:
        logger.warning("Ray is already initialised; address and workers are ignored.")
    try:
        if num_gpus_per_task is None:
            num_gpus_per_task = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        remote = ray.remote(num_cpus=num_cpus_per_task, num_gpus=num_gpus_per_task)(scenario_job)
        pending = {remote.remote(cache.root, cache.force, scenario, defences): (scenario, defences, indices)
                   for (scenario, defences), indices in jobs}
        logger.info("Submitted %d scenario task(s) to Ray (%s CPU, %s GPU each).", len(pending), num_cpus_per_task,
                    num_gpus_per_task)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            scenario, defences, indices = pending.pop(ref)
            payloads, counts = ray.get(ref)
            for key, value in counts.items():
                cache.counts[key] += value
            for (name, kwargs, retrain), i, payload in zip(defences, indices, payloads):
                cache.put_result(scenario, name, kwargs, retrain, payload)
                done(i, payload)
    finally:
        if started:
            ray.shutdown()
