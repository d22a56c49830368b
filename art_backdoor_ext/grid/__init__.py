"""
Experiment grids: a declarative spec (attacks x defences x models x seeds) run on a backend (``local`` in-process, or
``ray`` on a laptop's cores or a cluster), with a content-addressed cache that resumes an interrupted grid, and tables
of statistics over seeds (means with bootstrap CIs, detection and false-alarm rates with Wilson intervals, AUROC and TPR
at fixed FPR where a defence scores every image).

::

    from art_backdoor_ext.grid import run_grid

    result = run_grid("grid.yaml", cache=".grid-cache", out="benchmarks/results/my_grid")
    print(result.table())

or from a shell: ``python -m art_backdoor_ext.grid grid.yaml --out benchmarks/results/my_grid``. See
:mod:`art_backdoor_ext.grid.spec` for the spec, :mod:`art_backdoor_ext.grid.cache` for the cache and its safety rules.
"""
from art_backdoor_ext.grid.cache import GridCache, content_key
from art_backdoor_ext.grid.core import BACKENDS, DEFAULT_CACHE, GridResult, run_grid
from art_backdoor_ext.grid.report import aggregate, format_framework_table, format_grid_table, save_grid_results
from art_backdoor_ext.grid.spec import GridSpec, GridTask, load_spec
from art_backdoor_ext.grid.tasks import run_scenario_tasks
from art_backdoor_ext.grid.stats import bootstrap_ci, mean_ci, rate_ci, threshold_free_scores, wilson_interval

__all__ = ["BACKENDS", "DEFAULT_CACHE", "GridCache", "GridResult", "GridSpec", "GridTask", "aggregate",
           "bootstrap_ci", "content_key", "format_framework_table", "format_grid_table", "load_spec", "mean_ci",
           "rate_ci", "run_grid", "run_scenario_tasks", "save_grid_results", "threshold_free_scores", "wilson_interval"]
