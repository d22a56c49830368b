"""
The harness's plug-in API: what a registry module needs to add an attack or a defence row, and the result types.

It sits below :mod:`art_backdoor_ext.registry` (every registry module imports it) and above the attacks, defences and
metrics; it never imports a registry module or the runner (:mod:`art_backdoor_ext.evaluation.runner`). Attacks and
defences are looked up by name in two registries, so a new method adds a row with a decorator in one file::

    @register_defence("my-defence")
    def _my_defence(ctx: ScenarioContext, **kwargs):
        ...
        return report, is_clean               # a filtering defence (report has "detected", "target_class")

    @register_defence("my-repair", kind="transformer")
    def _my_repair(ctx: ScenarioContext, **kwargs):
        return new_classifier, report           # a defence that returns a repaired classifier

A report may carry ``"details"``: a small dict of JSON-safe diagnostics (numbers, lists, short strings) that the runner
copies into the row's ``extra``, so they survive :meth:`~art_backdoor_ext.metrics.DefenceResult.as_dict`, the grid's
cache and :meth:`art_backdoor_ext.grid.GridResult.scenario_results` (what a benchmark renderer reads back).

and lists its module in :mod:`art_backdoor_ext.evaluation.runner`'s imports (see ``docs/architecture.md``).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple, Union

import numpy as np

from art_backdoor_ext.metrics import DefenceResult, attack_success_rate

__all__ = [
    "ATTACKS", "DEFENCES", "AttackContext", "Scenario", "ScenarioContext", "ScenarioResult", "DefenceSpec",
    "register_attack", "register_defence", "get_attack", "attack_trains_model", "MODEL_TRAINING_ATTACKS",
    "get_defence", "as_trigger", "format_value", "format_table",
    "save_results", "load_results",
]


# ------------------------------------------------------------------------------------------------------ registries
@dataclasses.dataclass
class AttackContext:
    """What an attack factory may use: the clean data, its layout and the attack's settings."""

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
    channels_first: bool = True

    @property
    def image_shape(self) -> Tuple[int, ...]:
        """Shape of one image, in the classifier's layout."""
        return tuple(self.x_train.shape[1:])


@dataclasses.dataclass(frozen=True)
class DefenceSpec:
    """A registered defence row: ``kind`` is ``"filter"`` (``fn -> (report, is_clean)``) or ``"transformer"``
    (``fn -> (classifier, report)``)."""

    name: str
    kind: str
    fn: Callable[..., Any]

    def __iter__(self):  # ``kind, fn = DEFENCES[name]`` keeps working
        return iter((self.kind, self.fn))


ATTACKS: Dict[str, Callable[..., Any]] = {}
DEFENCES: Dict[str, DefenceSpec] = {}


MODEL_TRAINING_ATTACKS: set = set()
"""Names of the attacks registered with ``trains_model=True``."""


def register_attack(name: str, trains_model: bool = False):
    """
    Register ``factory(ctx: AttackContext, **kwargs) -> trigger f(x) -> x or an ART poisoning attack``.

    With ``trains_model=True`` the attack owns the training step (an adaptive attacker such as adversarial embedding):
    the factory returns an object with ``trigger`` (what the factory would otherwise return; it poisons the training
    set as for any attack) and ``train(classifier, x, y, is_poison) -> classifier``. The runner trains the scenario's
    naive model on the poisoned set as usual, hands it to ``train`` with that set, and evaluates every defence on the
    classifier ``train`` returns (the naive model's numbers go to ``ScenarioContext.attack_info``). Defences that
    retrain (``retrain=``) still retrain naively: the defender, not the attacker, controls that training.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"An attack name must be a non-empty string, got {name!r}.")

    def deco(factory):
        ATTACKS[name] = factory
        if trains_model:
            MODEL_TRAINING_ATTACKS.add(name)
        else:
            MODEL_TRAINING_ATTACKS.discard(name)
        return factory

    return deco


def attack_trains_model(name: str) -> bool:
    """Whether the registered attack ``name`` trains the model itself (``register_attack(..., trains_model=True)``)."""
    get_attack(name)
    return name in MODEL_TRAINING_ATTACKS


def register_defence(name: str, kind: str = "filter"):
    """
    Register a defence row for the harness.

    ``kind="filter"``: ``fn(ctx, **kw) -> (report, is_clean)``; ``kind="transformer"``:
    ``fn(ctx, **kw) -> (classifier, report)``.
    """
    if kind not in ("filter", "transformer"):
        raise ValueError(f"kind must be 'filter' or 'transformer', got {kind!r}.")
    if not isinstance(name, str) or not name:
        raise ValueError(f"A defence name must be a non-empty string, got {name!r}.")

    def deco(fn):
        DEFENCES[name] = DefenceSpec(name, kind, fn)
        return fn

    return deco


def get_attack(name: str) -> Callable[..., Any]:
    """The registered attack factory ``name``; ``ValueError`` listing the registered names otherwise."""
    if name not in ATTACKS:
        raise ValueError(f"Unknown attack {name!r}; registered: {', '.join(sorted(ATTACKS))}.")
    return ATTACKS[name]


def get_defence(name: str) -> DefenceSpec:
    """The registered defence row ``name``; ``ValueError`` listing the registered names otherwise."""
    if name not in DEFENCES:
        raise ValueError(f"Unknown defence {name!r}; registered: {', '.join(sorted(DEFENCES))}.")
    return DEFENCES[name]


def check_kwargs(fn: Callable[..., Any], kwargs: Dict[str, Any], what: str) -> None:
    """
    Raise a ``ValueError`` naming the accepted keywords when ``kwargs`` holds a key ``fn`` does not take. A factory
    or row that takes ``**kwargs`` passes them on to a class that checks them itself.
    """
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in list(params.items())[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"Unknown keyword(s) {unknown} for {what}; accepted: {', '.join(accepted) or 'none'}.")


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
    """
    Everything a defence row needs, shared by all rows of one scenario. Rows treat it as read-only: they never
    change its arrays or its classifier (clone first), and share work only through :meth:`shared`.
    """

    scenario: Scenario
    classifier: Any
    x_train: np.ndarray
    y_train: np.ndarray
    is_poison: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_clean: np.ndarray
    """The clean training set before poisoning (for retraining baselines and defenders' trusted data)."""
    y_clean: np.ndarray
    nb_classes: int
    channels_first: bool
    trigger: Optional[Callable[[np.ndarray], np.ndarray]] = None
    target: Optional[int] = None
    sources: List[int] = dataclasses.field(default_factory=list)
    clean_accuracy: float = float("nan")
    asr: float = float("nan")
    train_seconds: float = float("nan")
    verbose: bool = False
    attack_info: Dict[str, Any] = dataclasses.field(default_factory=dict)
    """What an attack that trains the model reported: the naive model's accuracy, ASR and seconds, the attack's own."""
    cache: Dict[Hashable, Any] = dataclasses.field(default_factory=dict)
    """Work shared between rows, keyed by what determines it; use :meth:`shared`."""

    @property
    def framework(self) -> str:
        return self.scenario.framework

    def shared(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """
        The value stored under ``key``, computing it with ``compute()`` the first time. ``key`` must hold every
        parameter that determines the value (e.g. ``("re-estimate", estimation parameters)``), so two rows share work
        only when it is the same work, whatever order they run in.
        """
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

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
    """The outcome of :func:`~art_backdoor_ext.evaluation.run_scenario`."""

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
                           [DefenceResult.from_dict(row) for row in d["rows"]])
            for d in data]


def save_results(results: Sequence[ScenarioResult], path_prefix: str) -> Tuple[str, str]:
    """Write ``<prefix>.json`` and ``<prefix>.md``; return both paths."""
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    with open(path_prefix + ".json", "w", encoding="utf-8") as f:
        json.dump([r.as_dict() for r in results], f, indent=2, default=str)
    with open(path_prefix + ".md", "w", encoding="utf-8") as f:
        f.write(format_table(results) + "\n")
    return path_prefix + ".json", path_prefix + ".md"
