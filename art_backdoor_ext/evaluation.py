"""
The comparison harness: one scenario end to end (data -> attack -> poisoned training set -> (robust) training ->
defences -> metrics), and a table of every defence's outcome on the *same* poisoned data.

Attacks and defences are looked up by name in two registries, so later modules add rows with a decorator::

    @register_defence("my-defence")
    def _my_defence(ctx: ScenarioContext, **kwargs):
        ...
        return report, is_clean               # a filtering defence (report has "detected", "target_class")

    @register_defence("my-repair", kind="transformer")
    def _my_repair(ctx: ScenarioContext, **kwargs):
        return new_classifier, report           # a defence that returns a repaired classifier
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from art_backdoor_ext.attacks.poisoning.dataset import PoisonedDataset, poison_dataset
from art_backdoor_ext.metrics import DefenceResult, accuracy, attack_success_rate, filtering_rates
from art_backdoor_ext.utils import as_class_list

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ registries
@dataclasses.dataclass
class AttackContext:
    """What an attack factory may use: the clean data, the framework and the attack's settings."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    nb_classes: int
    target: int
    sources: List[int]
    framework: str
    seed: int
    verbose: bool = False


ATTACKS: Dict[str, Callable[..., Any]] = {}
DEFENCES: Dict[str, Tuple[str, Callable[..., Any]]] = {}


def register_attack(name: str):
    """Register ``factory(ctx: AttackContext, **kwargs) -> trigger f(x) -> x or an ART poisoning attack``."""

    def deco(factory):
        ATTACKS[name] = factory
        return factory

    return deco


def register_defence(name: str, kind: str = "filter"):
    """
    Register a defence for the harness.

    ``kind="filter"``: ``fn(ctx, **kw) -> (report, is_clean)``; ``kind="transformer"``:
    ``fn(ctx, **kw) -> (classifier, report)``.
    """
    if kind not in ("filter", "transformer"):
        raise ValueError(f"kind must be 'filter' or 'transformer', got {kind!r}.")

    def deco(fn):
        DEFENCES[name] = (kind, fn)
        return fn

    return deco


def as_trigger(perturbation_or_attack, target: int, nb_classes: int) -> Callable[[np.ndarray], np.ndarray]:
    """A trigger function ``f(x) -> x`` from a perturbation or an ART poisoning attack."""
    if hasattr(perturbation_or_attack, "poison"):

        def trigger(x: np.ndarray) -> np.ndarray:
            y_target = np.zeros((len(x), nb_classes), np.float32)
            y_target[:, target] = 1.0
            return np.asarray(perturbation_or_attack.poison(np.array(x, copy=True), y=y_target)[0], np.float32)

        return trigger
    if callable(perturbation_or_attack):
        return perturbation_or_attack
    raise ValueError("An attack factory must return a callable f(x) -> x or an ART poisoning attack.")


# ------------------------------------------------------------------------------------------------------ scenario
@dataclasses.dataclass
class Scenario:
    """
    One experiment. ``attack=None`` (or ``"clean"``) trains on the clean set, to measure false detections.

    Poisoning uses ``n_per_source`` (RE paper's 1SC/3SC/9SC) or ``fraction`` (AEGIS); with neither, 1% of the
    training set is poisoned.
    """

    dataset: str = "mnist-5k"
    attack: Optional[str] = "badnets"
    target: int = 7
    sources: Union[None, int, Sequence[int]] = None
    n_per_source: Optional[int] = None
    fraction: Optional[float] = None
    framework: str = "pytorch"
    width: str = "compact"
    nb_epochs: int = 5
    batch_size: int = 64
    robust: bool = False
    robust_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    attack_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0

    @property
    def poisoned(self) -> bool:
        return self.attack not in (None, "clean")

    @property
    def name(self) -> str:
        what = self.attack if self.poisoned else "clean"
        return f"{self.dataset}/{what}/{self.framework}-{self.width}{'-robust' if self.robust else ''}"


@dataclasses.dataclass
class ScenarioContext:
    """Everything a defence needs, shared by all defences of one scenario."""

    scenario: Scenario
    classifier: Any
    x_train: np.ndarray
    y_train: np.ndarray
    is_poison: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_clean: np.ndarray
    """The clean training set before poisoning (for retraining baselines)."""
    y_clean: np.ndarray
    trigger: Optional[Callable[[np.ndarray], np.ndarray]]
    target: Optional[int]
    sources: List[int]
    nb_classes: int
    clean_accuracy: float
    asr: float
    train_seconds: float
    verbose: bool = False
    cache: Dict[str, Any] = dataclasses.field(default_factory=dict)
    """Defences may keep work here for other rows of the same scenario (e.g. the RE patterns)."""

    @property
    def framework(self) -> str:
        return self.scenario.framework

    def asr_of(self, classifier) -> float:
        """ASR of another classifier on this scenario's trigger (``nan`` on a clean scenario)."""
        if self.trigger is None:
            return float("nan")
        return attack_success_rate(classifier, self.x_test, self.y_test, self.trigger, self.target, self.sources)

    def train_model(self, x: np.ndarray, y: np.ndarray, seed: Optional[int] = None):
        """A fresh reference classifier of this scenario's kind trained on ``(x, y)``."""
        from art_backdoor_ext.models import make_classifier, train_robust

        sc = self.scenario
        seed = sc.seed if seed is None else seed
        clf = make_classifier(sc.framework, nb_classes=self.nb_classes, width=sc.width, x_train=x, y_train=y,
                              nb_epochs=0 if sc.robust else sc.nb_epochs, batch_size=sc.batch_size, seed=seed,
                              verbose=self.verbose)
        if sc.robust:
            kw = {"nb_epochs": sc.nb_epochs, "batch_size": sc.batch_size, **sc.robust_kwargs}
            train_robust(clf, x, y, seed=seed, verbose=self.verbose, **kw)
        return clf


@dataclasses.dataclass
class ScenarioResult:
    """The outcome of :func:`run_scenario`."""

    scenario: Scenario
    clean_accuracy: float
    asr: float
    train_seconds: float
    rows: List[DefenceResult]
    context: Optional[ScenarioContext] = None

    def as_dict(self) -> Dict[str, Any]:
        return {
            "scenario": dataclasses.asdict(self.scenario),
            "name": self.scenario.name,
            "clean_accuracy": self.clean_accuracy,
            "asr": self.asr,
            "train_seconds": self.train_seconds,
            "rows": [r.as_dict() for r in self.rows],
        }


def _load(dataset: str, framework: str, seed: int):
    from art_backdoor_ext.datasets import load_dataset

    return load_dataset(dataset, channels_first=(framework == "pytorch"), seed=seed)


def prepare_scenario(scenario: Scenario, verbose: bool = False, data=None) -> ScenarioContext:
    """
    Load the data, build the attack, poison the training set, train the model (robustly if asked), and measure its
    clean accuracy and ASR.

    :param data: Optional ``((x_train, y_train), (x_test, y_test))`` to use instead of ``scenario.dataset``.
    """
    sc = scenario
    if sc.framework not in ("pytorch", "keras"):
        raise ValueError(f"framework must be 'pytorch' or 'keras', got {sc.framework!r}.")
    (x_train, y_train), (x_test, y_test) = data if data is not None else _load(sc.dataset, sc.framework, sc.seed)
    nb_classes = int(max(y_train.max(), y_test.max()) + 1)
    trigger, target, sources = None, None, []
    is_poison = np.zeros(len(x_train), bool)
    x_poisoned, y_poisoned = x_train, y_train
    if sc.poisoned:
        if sc.attack not in ATTACKS:
            raise ValueError(f"Unknown attack {sc.attack!r}; registered: {', '.join(sorted(ATTACKS))}.")
        target = int(sc.target)
        sources = as_class_list(sc.sources, nb_classes, exclude=target)
        actx = AttackContext(x_train, y_train, x_test, y_test, nb_classes, target, sources, sc.framework, sc.seed,
                             verbose)
        attack = ATTACKS[sc.attack](actx, **sc.attack_kwargs)
        trigger = as_trigger(attack, target, nb_classes)
        fraction = sc.fraction if (sc.fraction is not None or sc.n_per_source is not None) else 0.01
        data_p: PoisonedDataset = poison_dataset(x_train, y_train, attack, target, sources,
                                                 n_per_source=sc.n_per_source, fraction=fraction,
                                                 nb_classes=nb_classes, seed=sc.seed)
        x_poisoned, y_poisoned, is_poison = data_p.x, data_p.y, data_p.is_poison
    ctx = ScenarioContext(sc, None, x_poisoned, y_poisoned, is_poison, x_test, y_test, x_train, y_train, trigger,
                          target, sources, nb_classes, float("nan"), float("nan"), float("nan"), verbose)
    start = time.perf_counter()
    ctx.classifier = ctx.train_model(x_poisoned, y_poisoned)
    ctx.train_seconds = time.perf_counter() - start
    ctx.clean_accuracy = accuracy(ctx.classifier, x_test, y_test)
    ctx.asr = ctx.asr_of(ctx.classifier)
    logger.info("%s: trained in %.1fs, clean accuracy %.3f, ASR %.3f, %d poisoned images.", sc.name,
                ctx.train_seconds, ctx.clean_accuracy, ctx.asr, int(is_poison.sum()))
    return ctx


def run_defences(ctx: ScenarioContext, defences: Iterable[str] = ("ac", "ss"),
                 defence_kwargs: Optional[Dict[str, Dict[str, Any]]] = None,
                 retrain: Union[bool, Iterable[str]] = False) -> List[DefenceResult]:
    """
    Run registered defences on one prepared scenario.

    :param defences: Names in :data:`DEFENCES`.
    :param defence_kwargs: Per-defence keyword arguments, by name.
    :param retrain: For filtering defences, retrain a fresh model on the images kept and report its clean accuracy and
                    ASR (the RE paper's "after retraining" columns). Training is deterministic (fixed seed), so a
                    defence that keeps every image reports the original model's numbers, and defences that keep the
                    same images share one retrained model. A collection of defence names retrains for those only.
    """
    defence_kwargs = defence_kwargs or {}
    defences = list(defences)
    retrain_for = set(defences if retrain is True else [] if retrain is False else retrain)
    retrained: Dict[bytes, Tuple[float, float]] = {}
    rows = []
    for name in defences:
        if name not in DEFENCES:
            raise ValueError(f"Unknown defence {name!r}; registered: {', '.join(sorted(DEFENCES))}.")
        kind, fn = DEFENCES[name]
        logger.info("Running defence %s on %s.", name, ctx.scenario.name)
        start = time.perf_counter()
        if kind == "filter":
            report, is_clean = fn(ctx, **defence_kwargs.get(name, {}))
            # a defence that reused work of an earlier row (RE patterns) reports its full cost in report["seconds"]
            seconds = max(time.perf_counter() - start, float(report.get("seconds") or 0.0))
            rates = filtering_rates(is_clean, ctx.is_poison, ctx.y_train, ctx.target)
            row = DefenceResult(name, report.get("detected"), report.get("target_class"), rates.tpr,
                                rates.fpr_target, rates.fpr, seconds, notes=report.get("notes", ""),
                                extra={"suspected_classes": report.get("suspected_classes", []),
                                       "nb_flagged": rates.nb_flagged})
            if name in retrain_for:
                keep = np.asarray(is_clean).astype(bool)
                key = np.packbits(keep).tobytes()
                if key not in retrained:
                    if keep.all():  # the identical training set and seed give the original model
                        retrained[key] = (ctx.clean_accuracy, ctx.asr)
                    else:
                        model = ctx.train_model(ctx.x_train[keep], ctx.y_train[keep])
                        retrained[key] = (accuracy(model, ctx.x_test, ctx.y_test), ctx.asr_of(model))
                row.clean_accuracy, row.asr = retrained[key]
        else:
            model, report = fn(ctx, **defence_kwargs.get(name, {}))
            seconds = time.perf_counter() - start
            row = DefenceResult(name, report.get("detected"), report.get("target_class"), seconds=seconds,
                                clean_accuracy=accuracy(model, ctx.x_test, ctx.y_test), asr=ctx.asr_of(model),
                                notes=report.get("notes", ""))
        rows.append(row)
    return rows


def run_scenario(scenario: Scenario, defences: Iterable[str] = ("ac", "ss"), verbose: bool = False,
                 defence_kwargs: Optional[Dict[str, Dict[str, Any]]] = None,
                 retrain: Union[bool, Iterable[str]] = False,
                 keep_context: bool = False, data=None) -> ScenarioResult:
    """Prepare a scenario and run the defences on it; see :func:`prepare_scenario` and :func:`run_defences`."""
    _ensure_registered()
    ctx = prepare_scenario(scenario, verbose=verbose, data=data)
    rows = run_defences(ctx, defences, defence_kwargs, retrain=retrain)
    return ScenarioResult(scenario, ctx.clean_accuracy, ctx.asr, ctx.train_seconds, rows,
                          ctx if keep_context else None)


# ------------------------------------------------------------------------------------------------------ output
def format_value(v: Any, digits: int = 3) -> str:
    """One table cell: ``-`` for None/NaN, yes/no for booleans, floats to ``digits`` decimals."""
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "-" if np.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def format_table(results: Union[ScenarioResult, Sequence[ScenarioResult]]) -> str:
    """A Markdown table with one row per (scenario, defence), plus the model's accuracy and ASR."""
    if isinstance(results, ScenarioResult):
        results = [results]
    header = ["scenario", "acc", "ASR", "defence", "detected", "target", "TPR", "FPR (target)", "FPR (all)",
              "acc after", "ASR after", "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for res in results:
        for row in res.rows or [DefenceResult("(none)", None, None)]:
            cells = [res.scenario.name, res.clean_accuracy, res.asr, row.defence, row.detected, row.target_class,
                     row.tpr, row.fpr_target, row.fpr, row.clean_accuracy, row.asr, row.seconds]
            lines.append("| " + " | ".join(format_value(c) for c in cells) + " |")
    return "\n".join(lines)


def load_results(path: str) -> List[ScenarioResult]:
    """Read back the results :func:`save_results` wrote to ``<prefix>.json`` (to re-render tables, not re-run)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return [ScenarioResult(Scenario(**d["scenario"]), d["clean_accuracy"], d["asr"], d["train_seconds"],
                           [DefenceResult(**row) for row in d["rows"]]) for d in data]


def save_results(results: Sequence[ScenarioResult], path_prefix: str) -> Tuple[str, str]:
    """Write ``<prefix>.json`` and ``<prefix>.md``; return both paths."""
    import os

    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    with open(path_prefix + ".json", "w", encoding="utf-8") as f:
        json.dump([r.as_dict() for r in results], f, indent=2, default=str)
    with open(path_prefix + ".md", "w", encoding="utf-8") as f:
        f.write(format_table(results) + "\n")
    return path_prefix + ".json", path_prefix + ".md"


# ------------------------------------------------------------------------------------------------------ built-ins
@register_attack("badnets")
def _badnets(ctx: AttackContext, size: int = 3, value: float = 1.0):
    """BadNets-style localised square through ART's ``PoisoningAttackBackdoor``."""
    from art.attacks.poisoning import PoisoningAttackBackdoor

    from art_backdoor_ext.attacks.poisoning.perturbations import localised_trigger

    return PoisoningAttackBackdoor(localised_trigger(size=size, value=value))


@register_attack("localised")
def _localised(ctx: AttackContext, size: int = 3, value: float = 1.0):
    from art_backdoor_ext.attacks.poisoning.perturbations import localised_trigger

    return localised_trigger(size=size, value=value)


@register_attack("distributed")
def _distributed(ctx: AttackContext, size: int = 2, value: float = 1.0):
    from art_backdoor_ext.attacks.poisoning.perturbations import distributed_trigger

    return distributed_trigger(size=size, value=value)


def _feature_layer(ctx: ScenarioContext, layer: Optional[str]) -> str:
    from art_backdoor_ext.estimators import get_adapter

    return get_adapter(ctx.classifier).resolve_layer(layer)


def _check_art_layer(ctx: ScenarioContext, layer: str) -> str:
    """ART's AC/SS read ``classifier.layer_names[-1]``; say which layer they really used."""
    used = ctx.classifier.layer_names[-1]
    return "" if used == layer else f"ART used layer {used!r}, not {layer!r}"


@register_defence("ac")
def _activation_clustering(ctx: ScenarioContext, nb_dims: int = 10, cluster_analysis: str = "smaller",
                           size_threshold: float = 0.35, layer: Optional[str] = None):
    """
    ART's Activation Clustering (2-means on PCA-10 features per class). ART's ``"relative-size"`` analysis fails under
    numpy >= 2.2, so it runs with ``"smaller"`` and the relative-size rule is applied here: a class is suspected when
    its smaller cluster holds under ``size_threshold`` of it, and only such clusters are flagged.
    """
    from art.defences.detector.poison import ActivationDefence

    layer = _feature_layer(ctx, layer)
    defence = ActivationDefence(ctx.classifier, ctx.x_train, np.eye(ctx.nb_classes)[ctx.y_train])
    # ART's k-means draws from numpy's global generator: seed it from the scenario (and restore it) so that a row
    # does not depend on what ran before it
    state = np.random.get_state()
    np.random.seed(ctx.scenario.seed)
    try:
        _, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=nb_dims, reduce="PCA",
                                            cluster_analysis=cluster_analysis)
    finally:
        np.random.set_state(state)
    return _summarise_filter(ctx, is_clean, size_threshold, _check_art_layer(ctx, layer))


@register_defence("ss")
def _spectral_signatures(ctx: ScenarioContext, eps_multiplier: float = 1.5, expected_pp_poison: Optional[float] = None,
                         layer: Optional[str] = None):
    """
    ART's Spectral Signatures. ``expected_pp_poison`` defaults to the true poison fraction of the target class (oracle
    knowledge, the most favourable setting for SS; 0.05 on a clean set). SS removes that many from *every* class, so it
    detects nothing by itself: ``detected`` is reported as ``None``.
    """
    from art.defences.detector.poison import SpectralSignatureDefense

    layer = _feature_layer(ctx, layer)
    if expected_pp_poison is None:
        expected_pp_poison = 0.05
        if ctx.target is not None and ctx.is_poison.any():
            expected_pp_poison = max(0.01, float(ctx.is_poison[ctx.y_train == ctx.target].mean()))
    defence = SpectralSignatureDefense(ctx.classifier, ctx.x_train, np.eye(ctx.nb_classes)[ctx.y_train],
                                       expected_pp_poison=expected_pp_poison, batch_size=256,
                                       eps_multiplier=eps_multiplier)
    _, is_clean = defence.detect_poison()
    report = {"detected": None, "target_class": None, "suspected_classes": [],
              "notes": _check_art_layer(ctx, layer)}
    return report, np.asarray(is_clean, int)


def _summarise_filter(ctx: ScenarioContext, is_clean: Sequence[int], size_threshold: float, notes: str):
    """
    ART's relative-size rule on top of the "smaller" analysis: a class is suspected when its smaller cluster holds under
    ``size_threshold`` of the class; only those clusters are marked poisonous (the rest is kept, as ART's own
    "relative-size" analysis would do).
    """
    is_clean = np.asarray(is_clean, int)
    fractions = {int(c): float(np.mean(is_clean[ctx.y_train == c] == 0)) for c in range(ctx.nb_classes)}
    suspected = sorted([c for c, f in fractions.items() if 0 < f < size_threshold], key=lambda c: fractions[c])
    is_clean = np.where(np.isin(ctx.y_train, suspected), is_clean, 1)
    report = {"detected": bool(suspected), "target_class": suspected[0] if suspected else None,
              "suspected_classes": suspected, "flagged_fraction_by_class": fractions, "notes": notes}
    return report, is_clean


def _ensure_registered() -> None:
    """
    Import every module of :mod:`art_backdoor_ext.registry`; each registers further attacks and defences (one module
    per method, so methods can be added without touching this file).
    """
    import importlib
    import pkgutil

    import art_backdoor_ext.registry as registry

    for info in pkgutil.iter_modules(registry.__path__):
        importlib.import_module(f"{registry.__name__}.{info.name}")
