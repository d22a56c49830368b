"""
Running a grid: every task's result from the cache when it holds a valid one, the missing ones computed scenario by
scenario on a backend (a scenario's model is trained, or loaded, once and its missing defences run on it), then the
statistics over seeds.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from art_backdoor_ext.evaluation.api import Scenario, ScenarioResult
from art_backdoor_ext.grid.cache import GridCache
from art_backdoor_ext.metrics import DefenceResult
from art_backdoor_ext.grid.report import aggregate, format_grid_table, save_grid_results
from art_backdoor_ext.grid.spec import GridSpec, GridTask, load_spec
from art_backdoor_ext.grid.tasks import run_scenario_tasks
from art_backdoor_ext.utils import progress

logger = logging.getLogger(__name__)

__all__ = ["GridResult", "run_grid", "BACKENDS", "DEFAULT_CACHE"]

BACKENDS = ("local", "ray")
DEFAULT_CACHE = ".grid-cache"

# what a worker runs for one scenario: (defence, defence_kwargs, retrain) per missing task
Job = Tuple[Scenario, List[Tuple[str, Dict[str, Any], bool]]]


@dataclasses.dataclass
class GridResult:
    """What :func:`run_grid` returns: the tasks, their payloads, the aggregated cells and the work counts."""

    spec: GridSpec
    tasks: List[GridTask]
    payloads: List[Optional[Dict[str, Any]]]
    cells: List[Dict[str, Any]]
    counts: Dict[str, int]
    """Work done by this run: ``trained``, ``poisoned``, ``defence`` (computed) and ``*_hit`` (from the cache)."""
    seconds: float = float("nan")

    def table(self) -> str:
        """The Markdown table (see :func:`~art_backdoor_ext.grid.report.format_grid_table`)."""
        return format_grid_table(self.cells)

    def task_rows(self) -> List[Dict[str, Any]]:
        """One JSON-safe dict per task: its cell, seed and payload."""
        return [{"cell": t.cell, "seed": t.scenario.seed, **(p or {})} for t, p in zip(self.tasks, self.payloads)]

    def scenario_results(self) -> List[Tuple[str, ScenarioResult]]:
        """
        The grid as the harness's results: one ``(label, ScenarioResult)`` per scenario (seed), in grid order, its
        rows rebuilt from the payloads (a row's ``extra`` holds the defence's ``details``; raw reports and markings
        are not kept). What a benchmark's renderer reads; scenarios with no computed task are left out.
        """
        out: Dict[str, Tuple[str, ScenarioResult]] = collections.OrderedDict()
        for task, payload in zip(self.tasks, self.payloads):
            if payload is None:
                continue
            key = repr((task.label, dataclasses.asdict(task.scenario)))
            if key not in out:
                out[key] = (task.label, ScenarioResult(task.scenario, payload["clean_accuracy"], payload["asr"],
                                                       payload["train_seconds"], []))
            row = DefenceResult.from_dict(payload["row"])
            if task.defence_label:  # name@label: the row is named as the spec names it
                row = dataclasses.replace(row, defence=task.defence_label)
            out[key][1].rows.append(row)
        return list(out.values())

    def save(self, path_prefix: str, plot: bool = True) -> Tuple[str, ...]:
        """Write ``<prefix>.md``, ``<prefix>.json`` and (``plot``) ``<prefix>.png``."""
        return save_grid_results(self.cells, path_prefix, spec=self.spec.as_dict(), tasks=self.task_rows(), plot=plot)


def _summary(task: GridTask, payload: Dict[str, Any]) -> str:
    row = payload["row"]

    def f(x):
        return "-" if x is None or not np.isfinite(x) else f"{x:.3f}"

    detected = {True: "yes", False: "no", None: "-"}[row.get("detected")]
    return (f"{task.name}: detected {detected} (target {row.get('target_class')}), TPR {f(row.get('tpr'))}, "
            f"FPR {f(row.get('fpr'))}, acc {f(payload['clean_accuracy'])}, ASR {f(payload['asr'])}, "
            f"{row.get('seconds', float('nan')):.1f} s")


def _jobs(tasks: Sequence[GridTask], missing: Sequence[int]) -> List[Tuple[Job, List[int]]]:
    """The missing tasks grouped by scenario (in grid order): one job per scenario and its task indices."""
    groups: Dict[str, Tuple[Scenario, List[Tuple[str, Dict[str, Any], bool]], List[int]]] = collections.OrderedDict()
    for i in missing:
        t = tasks[i]
        key = repr(dataclasses.asdict(t.scenario))
        groups.setdefault(key, (t.scenario, [], []))
        groups[key][1].append((t.defence, t.defence_kwargs, t.retrain))
        groups[key][2].append(i)
    return [((sc, defs), idx) for sc, defs, idx in groups.values()]


def _run_local(jobs, cache: GridCache, verbose: bool, done: Callable[[int, Dict[str, Any]], None], **_) -> None:
    for (scenario, defences), indices in jobs:
        run_scenario_tasks(scenario, defences, cache, verbose=False,
                           on_result=lambda i, payload, idx=indices: done(idx[i], payload))


def run_grid(spec: Union[str, Mapping[str, Any], GridSpec], cache: Union[str, GridCache] = DEFAULT_CACHE,
             backend: str = "local", out: Optional[str] = None, force: bool = False, workers: Optional[int] = None,
             address: Optional[str] = None, verbose: bool = True, plot: bool = True,
             cached_only: bool = False) -> GridResult:
    """
    Run a grid: validate the spec (before anything is trained), take every valid result from the cache, compute the
    missing tasks scenario by scenario on the backend, and aggregate the statistics over seeds.

    :param spec: A :class:`GridSpec`, a spec mapping, or the path of a YAML/JSON spec.
    :param cache: Cache folder (or a :class:`GridCache`); an interrupted grid resumes from it.
    :param backend: ``"local"`` (in this process) or ``"ray"``.
    :param out: Optional path prefix for ``.md``, ``.json`` and ``.png`` outputs.
    :param force: Recompute everything (overwriting the cache).
    :param workers: ``ray``: CPUs of the local Ray started when no ``address`` is given (default 2). ``local`` runs
                    one task at a time.
    :param address: ``ray``: the address of an existing Ray cluster (``"auto"`` for the one this machine belongs to).
    :param verbose: Progress bar over tasks and a log line per finished task.
    :param plot: Write the error-bar plot with the tables.
    :param cached_only: Compute nothing: aggregate the results the cache holds (a partial grid's tables; the missing
                        tasks are left out of every cell and counted in the log).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}.")
    if backend == "local" and (workers not in (None, 1) or address is not None):
        raise ValueError("workers and address apply to the ray backend; the local backend runs one task at a time.")
    if cached_only and force:
        raise ValueError("cached_only computes nothing and force recomputes everything: give one of them.")
    grid = load_spec(spec)
    if isinstance(cache, GridCache):
        cache.force = cache.force or force
    else:
        cache = GridCache(cache, force=force)
    start = time.perf_counter()
    tasks = grid.tasks()
    payloads: List[Optional[Dict[str, Any]]] = [
        cache.get_result(t.scenario, t.defence, t.defence_kwargs, t.retrain) for t in tasks]
    missing = [i for i, p in enumerate(payloads) if p is None]
    logger.info("Grid %s: %d tasks, %d from the cache, %d to compute (backend %s).", grid.name, len(tasks),
                len(tasks) - len(missing), len(missing), backend)
    bar = progress(verbose=verbose, total=len(tasks), initial=len(tasks) - len(missing), desc=f"grid {grid.name}",
                   unit="task")

    def done(i: int, payload: Dict[str, Any]) -> None:
        payloads[i] = payload
        bar.update(1)
        if verbose:
            logger.info(_summary(tasks[i], payload))

    try:
        if missing and cached_only:
            logger.warning("Grid %s: %d of %d tasks not in the cache, left out (cached_only).", grid.name,
                           len(missing), len(tasks))
        elif missing:
            run = _run_local if backend == "local" else _run_ray
            run(_jobs(tasks, missing), cache, verbose=verbose, done=done, workers=workers, address=address)
    finally:
        bar.close()
    result = GridResult(grid, tasks, payloads, aggregate(tasks, payloads), dict(cache.counts),
                        time.perf_counter() - start)
    if out:
        paths = result.save(out, plot=plot)
        logger.info("Grid %s written to %s.", grid.name, ", ".join(paths))
    return result


def _run_ray(jobs, cache: GridCache, verbose: bool, done: Callable[[int, Dict[str, Any]], None],
             workers: Optional[int] = None, address: Optional[str] = None) -> None:
    from art_backdoor_ext.grid.ray_backend import run_ray

    run_ray(jobs, cache, done=done, workers=workers, address=address)
