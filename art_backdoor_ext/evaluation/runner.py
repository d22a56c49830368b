"""
The comparison harness's runner: one scenario end to end (data -> attack -> poisoned training set -> (robust) training
-> defences -> metrics), and a table of every defence's outcome on the *same* poisoned data.

It sits above :mod:`art_backdoor_ext.registry` and imports every registry module explicitly below, so every attack
and defence of the package is known by name as soon as this module is imported: nothing is registered by a side
effect of running something else.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

# every row of the comparison: one module per method (add a new module here)
from art_backdoor_ext.registry import (  # noqa: F401  pylint: disable=unused-import
    aegis,
    art_baselines,
    attacks,
    cluster_impurity,
    fine_pruning,
    neural_cleanse,
    reference,
    reverse_engineering,
    strip,
)
from art_backdoor_ext.attacks.poisoning.dataset import poison_dataset
from art_backdoor_ext.evaluation.api import (
    AttackContext,
    Scenario,
    ScenarioContext,
    ScenarioResult,
    as_trigger,
    attack_trains_model,
    check_kwargs,
    get_attack,
    get_defence,
)
from art_backdoor_ext.layout import framework_channels_first
from art_backdoor_ext.metrics import DefenceResult, accuracy, filtering_rates, to_json_safe
from art_backdoor_ext.utils import as_class_list, check_bool, check_choice, check_int, check_seed

logger = logging.getLogger(__name__)

__all__ = ["prepare_scenario", "run_defences", "run_scenario"]


def _load(dataset: str, channels_first: bool, seed: int):
    from art_backdoor_ext.datasets import load_dataset

    return load_dataset(dataset, channels_first=channels_first, seed=seed)


def check_scenario(scenario: Scenario) -> None:
    """Validate what can be checked before any data is loaded or model trained; ``ValueError`` naming the field."""
    if not isinstance(scenario, Scenario):
        raise ValueError(f"scenario must be a Scenario, got {type(scenario).__name__}.")
    from art_backdoor_ext.models import WIDTHS

    framework_channels_first(scenario.framework)  # raises for an unknown framework
    check_choice("Scenario.width", scenario.width, tuple(WIDTHS))
    check_seed("Scenario.seed", scenario.seed, allow_none=False)
    check_int("Scenario.batch_size", scenario.batch_size, low=1)
    check_bool("Scenario.robust", scenario.robust)
    if not isinstance(scenario.robust_kwargs, dict) or not isinstance(scenario.attack_kwargs, dict):
        raise ValueError("Scenario.robust_kwargs and Scenario.attack_kwargs must be dicts of keyword arguments.")
    if scenario.robust_kwargs and not scenario.robust:
        raise ValueError(f"Scenario.robust_kwargs {sorted(scenario.robust_kwargs)} are given but robust=False, so they "
                         "would be ignored; set robust=True or drop them.")
    robust_keys = ("eps", "eps_step", "max_iter", "nb_epochs", "batch_size", "ratio")  # train_robust's, bar the data
    unknown = sorted(set(scenario.robust_kwargs) - set(robust_keys))
    if unknown:
        raise ValueError(f"Unknown keyword(s) {unknown} in Scenario.robust_kwargs; accepted (train_robust's): "
                         f"{', '.join(robust_keys)}.")
    if scenario.poisoned:
        check_int("Scenario.target", scenario.target, low=0)
        if scenario.sources is not None and not (isinstance(scenario.sources, str) and scenario.sources == "all"):
            sources = (list(scenario.sources) if isinstance(scenario.sources, Iterable)
                       and not isinstance(scenario.sources, str) else [scenario.sources])
            bad = [c for c in sources if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0]
            if bad or not sources:
                raise ValueError(f"Scenario.sources must be None, 'all', a class index or a list of class indices, got "
                                 f"{scenario.sources!r}.")
    if scenario.poisoned:
        check_kwargs(get_attack(scenario.attack), scenario.attack_kwargs, f"attack {scenario.attack!r}")
        if scenario.fraction is not None and not 0 < float(scenario.fraction) < 1:
            raise ValueError(f"Scenario.fraction must lie in (0, 1), got {scenario.fraction!r}.")
        if scenario.n_per_source is not None and (isinstance(scenario.n_per_source, bool)
                                                  or not isinstance(scenario.n_per_source, (int, np.integer))
                                                  or scenario.n_per_source < 1):
            raise ValueError(f"Scenario.n_per_source must be a positive integer, got {scenario.n_per_source!r}.")
    if isinstance(scenario.nb_epochs, bool) or not isinstance(scenario.nb_epochs, (int, np.integer)) \
            or scenario.nb_epochs < 0:
        raise ValueError(f"Scenario.nb_epochs must be an integer >= 0, got {scenario.nb_epochs!r}.")


def prepare_scenario(scenario: Scenario, verbose: bool = False, data=None, store=None) -> ScenarioContext:
    """
    Load the data, build the attack, poison the training set, train the model (robustly if asked), and measure its
    clean accuracy and ASR.

    :param data: Optional ``((x_train, y_train), (x_test, y_test))`` to use instead of ``scenario.dataset``, in the
                 scenario framework's layout.
    :param store: Optional cache of poisoned training sets and trained models, keyed by the scenario's settings (e.g.
                  :class:`art_backdoor_ext.grid.GridCache`): an object with ``poisoned(scenario, compute)`` returning
                  ``(x, y, is_poison)`` and ``model(ctx, compute)`` returning ``(classifier, train_seconds)``, each
                  calling ``compute()`` when it holds no valid entry. It cannot be combined with ``data``, which its
                  keys would not describe.
    """
    sc = scenario
    check_scenario(sc)
    if store is not None and data is not None:
        raise ValueError("store= caches by the scenario's settings and cannot be combined with data=; give the "
                         "dataset by name.")
    channels_first = framework_channels_first(sc.framework)
    (x_train, y_train), (x_test, y_test) = data if data is not None else _load(sc.dataset, channels_first, sc.seed)
    nb_classes = int(max(y_train.max(), y_test.max()) + 1)
    trainer = None
    ctx = ScenarioContext(scenario=sc, classifier=None, x_train=x_train, y_train=y_train,
                          is_poison=np.zeros(len(x_train), bool), x_test=x_test, y_test=y_test, x_clean=x_train,
                          y_clean=y_train, nb_classes=nb_classes, channels_first=channels_first, verbose=verbose)
    if sc.poisoned:
        ctx.target = int(sc.target)
        ctx.sources = as_class_list(sc.sources, nb_classes, exclude=ctx.target)
        actx = AttackContext(x_train, y_train, x_test, y_test, nb_classes, ctx.target, ctx.sources, sc.framework,
                             sc.seed, verbose, channels_first)
        attack = get_attack(sc.attack)(actx, **sc.attack_kwargs)
        if attack_trains_model(sc.attack):  # the attack trains the model: poison with its trigger, train with it
            trainer, attack = attack, attack.trigger
        ctx.trigger = as_trigger(attack, ctx.target, nb_classes)
        fraction = sc.fraction if (sc.fraction is not None or sc.n_per_source is not None) else 0.01

        def poison():
            data_p = poison_dataset(x_train, y_train, attack, ctx.target, ctx.sources, n_per_source=sc.n_per_source,
                                    fraction=fraction, nb_classes=nb_classes, seed=sc.seed)
            return data_p.x, data_p.y, data_p.is_poison

        ctx.x_train, ctx.y_train, ctx.is_poison = poison() if store is None else store.poisoned(sc, poison)

    def train():
        start = time.perf_counter()
        classifier = ctx.train_model(ctx.x_train, ctx.y_train)
        if trainer is not None:  # an attack that trains the model continues from the naive model
            naive_seconds = time.perf_counter() - start
            ctx.attack_info = {"naive_accuracy": accuracy(classifier, x_test, y_test),
                               "naive_asr": ctx.asr_of(classifier), "naive_seconds": naive_seconds}
            attack_start = time.perf_counter()
            classifier = trainer.train(classifier, ctx.x_train, ctx.y_train, ctx.is_poison)
            ctx.attack_info["attack_seconds"] = time.perf_counter() - attack_start
            ctx.attack_info.update(getattr(trainer, "info", {}) or {})
        return classifier, time.perf_counter() - start

    # with a store, a cached model comes back without its attack_info (the attack did not run)
    ctx.classifier, ctx.train_seconds = train() if store is None else store.model(ctx, train)
    ctx.clean_accuracy = accuracy(ctx.classifier, x_test, y_test)
    ctx.asr = ctx.asr_of(ctx.classifier)
    logger.info("%s: trained in %.1fs, clean accuracy %.3f, ASR %.3f, %d poisoned images.", sc.name,
                ctx.train_seconds, ctx.clean_accuracy, ctx.asr, int(ctx.is_poison.sum()))
    return ctx


def _check_defences(defences: Iterable[str], defence_kwargs: Optional[Dict[str, Dict[str, Any]]]) -> List[str]:
    """Validate the defence names and their keyword arguments before anything runs."""
    if isinstance(defences, str):
        raise ValueError(f"defences must be a list of names, got the string {defences!r}; use [{defences!r}].")
    defences = list(defences)
    for name in defences:
        get_defence(name)
    defence_kwargs = defence_kwargs or {}
    unused = sorted(set(defence_kwargs) - set(defences))
    if unused:
        raise ValueError(f"defence_kwargs has entries for {unused}, which are not among the defences run "
                         f"({', '.join(defences) or 'none'}).")
    for name, kwargs in defence_kwargs.items():
        check_kwargs(get_defence(name).fn, kwargs, f"defence {name!r}")
    return defences


def _check_retrain(retrain: Union[bool, Iterable[str]], defences: List[str]) -> set:
    """The defences to retrain for: ``retrain`` must be a bool or names of filtering defences among ``defences``."""
    if retrain is True:
        return set(defences)
    if retrain is False or retrain is None:
        return set()
    if isinstance(retrain, str) or not isinstance(retrain, Iterable):
        raise ValueError(f"retrain must be True, False or a list of defence names, got {retrain!r}.")
    names = list(retrain)
    missing = sorted(set(names) - set(defences))
    if missing:
        raise ValueError(f"retrain names {missing}, which are not among the defences run ({', '.join(defences)}).")
    repairs = sorted(n for n in names if get_defence(n).kind != "filter")
    if repairs:
        raise ValueError(f"retrain applies to filtering defences only; {repairs} return a repaired model already.")
    return set(names)


def run_defences(ctx: ScenarioContext, defences: Iterable[str] = ("ac", "ss"),
                 defence_kwargs: Optional[Dict[str, Dict[str, Any]]] = None,
                 retrain: Union[bool, Iterable[str]] = False) -> List[DefenceResult]:
    """
    Run registered defences on one prepared scenario.

    :param defences: Registered defence names (:data:`~art_backdoor_ext.evaluation.DEFENCES`).
    :param defence_kwargs: Per-defence keyword arguments, by name.
    :param retrain: For filtering defences, retrain a fresh model on the images kept and report its clean accuracy and
                    ASR (the RE paper's "after retraining" columns). Training is deterministic (fixed seed), so a
                    defence that keeps every image reports the original model's numbers, and defences that keep the
                    same images share one retrained model. A collection of defence names retrains for those only.
    :return: One :class:`~art_backdoor_ext.metrics.DefenceResult` per defence, keeping the defence's raw report
             (``row.report``) and, for filters, its ``is_clean`` marking.
    """
    defence_kwargs = defence_kwargs or {}
    defences = _check_defences(defences, defence_kwargs)
    retrain_for = _check_retrain(retrain, defences)
    rows = []
    for name in defences:
        spec = get_defence(name)
        logger.info("Running defence %s on %s.", name, ctx.scenario.name)
        start = time.perf_counter()
        if spec.kind == "filter":
            report, is_clean = spec.fn(ctx, **defence_kwargs.get(name, {}))
            is_clean = np.asarray(is_clean, int)
            # a defence that reused work of an earlier row (RE patterns) reports its full cost in report["seconds"]
            seconds = max(time.perf_counter() - start, float(report.get("seconds") or 0.0))
            rates = filtering_rates(is_clean, ctx.is_poison, ctx.y_train, ctx.target)
            row = DefenceResult(name, report.get("detected"), report.get("target_class"), rates.tpr,
                                rates.fpr_target, rates.fpr, seconds, notes=report.get("notes", ""),
                                extra={"suspected_classes": report.get("suspected_classes", []),
                                       "nb_flagged": rates.nb_flagged},
                                report=report, is_clean=is_clean)
            if name in retrain_for:
                row.clean_accuracy, row.asr = _retrained(ctx, is_clean)
        else:
            model, report = spec.fn(ctx, **defence_kwargs.get(name, {}))
            seconds = time.perf_counter() - start
            row = DefenceResult(name, report.get("detected"), report.get("target_class"), seconds=seconds,
                                clean_accuracy=accuracy(model, ctx.x_test, ctx.y_test), asr=ctx.asr_of(model),
                                notes=report.get("notes", ""), report=report)
        details = report.get("details")
        if details:  # JSON-safe diagnostics a renderer reads back (kept by as_dict and by the grid's cache)
            row.extra.update(to_json_safe(details))
        rows.append(row)
    return rows


def _retrained(ctx: ScenarioContext, is_clean: np.ndarray) -> Tuple[float, float]:
    """Clean accuracy and ASR of a model retrained on the kept images; one model per distinct keep-set."""
    keep = np.asarray(is_clean).astype(bool)
    if keep.all():  # the identical training set and seed give the original model
        return ctx.clean_accuracy, ctx.asr

    def train() -> Tuple[float, float]:
        model = ctx.train_model(ctx.x_train[keep], ctx.y_train[keep])
        return accuracy(model, ctx.x_test, ctx.y_test), ctx.asr_of(model)

    return ctx.shared(("retrained", np.packbits(keep).tobytes()), train)


def run_scenario(scenario: Scenario, defences: Iterable[str] = ("ac", "ss"), verbose: bool = False,
                 defence_kwargs: Optional[Dict[str, Dict[str, Any]]] = None,
                 retrain: Union[bool, Iterable[str]] = False,
                 keep_context: bool = False, data=None) -> ScenarioResult:
    """
    Prepare a scenario and run the defences on it; see :func:`prepare_scenario` and :func:`run_defences`. Names and
    keyword arguments are validated before any model is trained.
    """
    check_scenario(scenario)
    defences = _check_defences(defences, defence_kwargs)
    _check_retrain(retrain, defences)
    ctx = prepare_scenario(scenario, verbose=verbose, data=data)
    rows = run_defences(ctx, defences, defence_kwargs, retrain=retrain)
    return ScenarioResult(scenario, ctx.clean_accuracy, ctx.asr, ctx.train_seconds, rows,
                          ctx if keep_context else None)
