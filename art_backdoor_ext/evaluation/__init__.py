"""
The comparison harness: every attack and defence of the package (and ART's) as a named row of one table, on the same
poisoned data.

* :mod:`art_backdoor_ext.evaluation.api`: the plug-in API (contexts, registries, result rows) that registry modules
  import;
* :mod:`art_backdoor_ext.evaluation.runner`: :func:`prepare_scenario`, :func:`run_defences`, :func:`run_scenario`;
  it imports every registry module explicitly.

The runner's names and the registries (``ATTACKS``, ``DEFENCES``, ``get_attack``, ``get_defence``) are loaded on first
access (PEP 562) through the runner, so they are complete whenever a user sees them, and a registry module importing
the plug-in API does not import the runner, which imports the registry back.
"""
from art_backdoor_ext.evaluation.api import (  # noqa: F401
    AttackContext,
    DefenceSpec,
    Scenario,
    ScenarioContext,
    ScenarioResult,
    as_trigger,
    format_table,
    format_value,
    load_results,
    register_attack,
    register_defence,
    save_results,
)
from art_backdoor_ext.metrics import DefenceResult  # noqa: F401

_RUNNER = ("prepare_scenario", "run_defences", "run_scenario", "check_scenario")
# the registries as users see them: complete, i.e. with every registry module loaded (through the runner)
_REGISTRY = ("ATTACKS", "DEFENCES", "get_attack", "get_defence", "attack_trains_model")

__all__ = ["AttackContext", "DefenceSpec", "DefenceResult", "Scenario", "ScenarioContext", "ScenarioResult",
           "as_trigger", "format_table", "format_value", "load_results", "register_attack", "register_defence",
           "save_results", *_RUNNER, *_REGISTRY]


def __getattr__(name):
    if name in _RUNNER or name in _REGISTRY:
        from art_backdoor_ext.evaluation import api, runner

        return getattr(runner if name in _RUNNER else api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
