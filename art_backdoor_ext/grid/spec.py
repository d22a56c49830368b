"""
Declarative experiment grids: a small dict (or YAML file) expanded into scenario x defence tasks, validated in full
before anything is loaded or trained.

A spec names the settings every scenario shares, the attacks (each with its poisoning settings), the defences (each
with its keyword arguments) and the seeds. Any of ``dataset``, ``framework``, ``width``, ``nb_epochs``, ``batch_size``
and ``robust`` may be a list, which sweeps it::

    name: tiny
    dataset: digits
    framework: pytorch
    width: [compact, wide]        # a list sweeps the setting
    nb_epochs: 6
    seeds: [0, 1]                 # or a count: seeds: 10 is seeds 0..9
    attacks:
      - attack: clean             # trains on the clean set: false alarms
      - attack: localised
        label: localised-2sc      # the cell's name in the tables (default: the attack's name)
        target: 1
        sources: [2, 3]
        n_per_source: 40
        attack_kwargs: {size: 3}
    defences:
      ac: {}
      ss: {eps_multiplier: 1.5}
      ss@strict: {eps_multiplier: 1.0}   # name@label: the same defence again, other settings, its own table row
    retrain: false                # true, or a list of defence keys, retrains after filtering

The seed of a task seeds the dataset split, the poisoning and the training (:class:`~art_backdoor_ext.evaluation.api.
Scenario`'s ``seed``): seeds are independent repetitions of the whole experiment.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from art_backdoor_ext.evaluation.api import Scenario, check_kwargs, get_defence
from art_backdoor_ext.evaluation.runner import check_scenario

__all__ = ["GridSpec", "GridTask", "load_spec", "SWEEP_FIELDS"]

SWEEP_FIELDS = ("dataset", "framework", "width", "nb_epochs", "batch_size", "robust")
"""Scenario settings a spec may give as a list, to sweep them."""
ATTACK_FIELDS = ("attack", "label", "target", "sources", "n_per_source", "fraction", "attack_kwargs")
"""Keys of one entry of a spec's ``attacks``."""
TOP_KEYS = ("name", "seeds", "attacks", "defences", "retrain", "robust_kwargs") + SWEEP_FIELDS


@dataclasses.dataclass(frozen=True)
class GridTask:
    """One defence on one scenario (one seed): the unit the grid caches and reports."""

    scenario: Scenario
    label: str
    """The attack entry's label (its cell in the tables)."""
    defence: str
    """The registered defence's name (what runs)."""
    defence_kwargs: Dict[str, Any]
    retrain: bool
    defence_label: Optional[str] = None
    """The spec's key when it is ``name@label`` (the same defence twice with different settings), else ``None``."""

    @property
    def defence_name(self) -> str:
        """The defence's row in the tables: the spec's key (``name`` or ``name@label``)."""
        return self.defence_label or self.defence

    @property
    def cell(self) -> str:
        """The table cell this task belongs to: every setting but the seed."""
        return f"{scenario_cell(self.scenario, self.label)} | {self.defence_name}"

    @property
    def name(self) -> str:
        return f"{self.cell} | seed {self.scenario.seed}"


def scenario_cell(scenario: Scenario, label: str) -> str:
    """A scenario's name in the tables, with the attack entry's label and every setting but the seed."""
    sc = scenario
    robust = "-robust" if sc.robust else ""
    return f"{sc.dataset}/{label}/{sc.framework}-{sc.width}{robust}/e{sc.nb_epochs}b{sc.batch_size}"


def _as_list(value: Any, field: str) -> List[Any]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError(f"Grid spec field {field!r} is an empty list; give at least one value.")
    return values


def _check_seeds(seeds: Any) -> List[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"Grid spec field 'seeds' must be a positive count or a list of integers, got {seeds!r}.")
        return list(range(int(seeds)))
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise ValueError(f"Grid spec field 'seeds' must be a non-empty list of integers (or a count), got {seeds!r}.")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0]
    if bad:
        raise ValueError(f"Grid spec field 'seeds' must hold integers >= 0; got {bad}.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"Grid spec field 'seeds' repeats a seed: {list(seeds)}.")
    return [int(s) for s in seeds]


def _check_attacks(attacks: Any) -> List[Dict[str, Any]]:
    if not isinstance(attacks, (list, tuple)) or not attacks:
        raise ValueError("Grid spec field 'attacks' must be a non-empty list of attack entries (an attack name, or a "
                         "mapping with 'attack' and its settings).")
    entries = []
    for i, entry in enumerate(attacks):
        where = f"attacks[{i}]"
        if isinstance(entry, str) or entry is None:
            entry = {"attack": entry}
        if not isinstance(entry, Mapping):
            raise ValueError(f"Grid spec field {where} must be an attack name or a mapping, got {entry!r}.")
        unknown = sorted(set(entry) - set(ATTACK_FIELDS))
        if unknown:
            raise ValueError(f"Grid spec field {where} has unknown key(s) {unknown}; accepted: "
                             f"{', '.join(ATTACK_FIELDS)}.")
        if "attack" not in entry:
            raise ValueError(f"Grid spec field {where} needs an 'attack' name ('clean' for no attack).")
        entry = dict(entry)
        if entry["attack"] is None:
            entry["attack"] = "clean"
        if not isinstance(entry["attack"], str):
            raise ValueError(f"Grid spec field {where}.attack must be a name, got {entry['attack']!r}.")
        entry.setdefault("label", entry["attack"])
        if not isinstance(entry["label"], str) or not entry["label"] or "|" in entry["label"]:
            raise ValueError(f"Grid spec field {where}.label must be a non-empty name without '|', "
                             f"got {entry['label']!r}.")
        kwargs = entry.get("attack_kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise ValueError(f"Grid spec field {where}.attack_kwargs must be a mapping, got {kwargs!r}.")
        entry["attack_kwargs"] = dict(kwargs)
        entries.append(entry)
    labels = [e["label"] for e in entries]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise ValueError(f"Grid spec field 'attacks' has several entries labelled {dupes}; give each a distinct "
                         "'label'.")
    return entries


def _check_defences(defences: Any) -> Dict[str, Dict[str, Any]]:
    if isinstance(defences, str):
        defences = [defences]
    if isinstance(defences, (list, tuple)):
        out: Dict[str, Dict[str, Any]] = {}
        for i, item in enumerate(defences):
            if isinstance(item, str):
                out[item] = {}
            elif isinstance(item, Mapping) and len(item) == 1:
                (name, kwargs), = item.items()
                out[name] = kwargs
            else:
                raise ValueError(f"Grid spec field defences[{i}] must be a defence name or {{name: kwargs}}, "
                                 f"got {item!r}.")
        defences = out
    if not isinstance(defences, Mapping) or not defences:
        raise ValueError("Grid spec field 'defences' must name at least one defence (a mapping name -> keyword "
                         "arguments, or a list of names).")
    checked = {}
    for key, kwargs in defences.items():
        kwargs = kwargs or {}
        if not isinstance(kwargs, Mapping):
            raise ValueError(f"Grid spec field defences.{key} must be a mapping of keyword arguments, got {kwargs!r}.")
        name, label = _split_defence_key(key)
        if label is not None and not label:
            raise ValueError(f"Grid spec field defences.{key}: the label after '@' is empty; write name@label.")
        try:
            check_kwargs(get_defence(name).fn, dict(kwargs), f"defence {name!r}")
        except ValueError as err:
            raise ValueError(f"Grid spec field defences.{key}: {err}") from None
        checked[str(key)] = dict(kwargs)
    return checked


def _split_defence_key(key: Any) -> Tuple[str, Optional[str]]:
    """A spec's defence key: ``name`` or ``name@label`` (the same defence more than once) -> ``(name, label)``."""
    name, sep, label = str(key).partition("@")
    return name, (label if sep else None)


@dataclasses.dataclass
class GridSpec:
    """
    A validated grid: build it with :meth:`from_dict` or :func:`load_spec`, expand it with :meth:`scenarios` and
    :meth:`tasks`. Construction checks every name and setting, so a bad spec fails before any training, with a message
    naming the field.
    """

    name: str
    seeds: List[int]
    attacks: List[Dict[str, Any]]
    defences: Dict[str, Dict[str, Any]]
    sweep: Dict[str, List[Any]]
    retrain: Union[bool, List[str]] = False
    robust_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "GridSpec":
        """Validate a spec mapping (see the module docstring) and return the grid; ``ValueError`` naming the field."""
        if isinstance(spec, GridSpec):
            return spec
        if not isinstance(spec, Mapping):
            raise ValueError(f"A grid spec must be a mapping, got {type(spec).__name__}.")
        unknown = sorted(set(spec) - set(TOP_KEYS))
        if unknown:
            raise ValueError(f"Unknown grid spec field(s) {unknown}; accepted: {', '.join(TOP_KEYS)}.")
        for required in ("seeds", "attacks", "defences"):
            if required not in spec:
                raise ValueError(f"Grid spec field {required!r} is missing.")
        defaults = Scenario()
        sweep = {f: _as_list(spec.get(f, getattr(defaults, f)), f) for f in SWEEP_FIELDS}
        _check_sweep(sweep)
        retrain = spec.get("retrain", False)
        defences = _check_defences(spec["defences"])
        if not isinstance(retrain, bool):
            retrain = _as_list(retrain, "retrain")
            extra = sorted(set(retrain) - set(defences))
            if extra:
                raise ValueError(f"Grid spec field 'retrain' names {extra}, which are not among the defences.")
        robust_kwargs = spec.get("robust_kwargs") or {}
        if not isinstance(robust_kwargs, Mapping):
            raise ValueError(f"Grid spec field 'robust_kwargs' must be a mapping, got {robust_kwargs!r}.")
        name = spec.get("name", "grid")
        if not isinstance(name, str) or not name:
            raise ValueError(f"Grid spec field 'name' must be a non-empty string, got {name!r}.")
        grid = cls(name=name, seeds=_check_seeds(spec["seeds"]), attacks=_check_attacks(spec["attacks"]),
                   defences=defences, sweep=sweep, retrain=retrain, robust_kwargs=dict(robust_kwargs))
        grid.scenarios()  # every scenario passes check_scenario
        return grid

    def scenarios(self) -> List[Tuple[str, Scenario]]:
        """Every ``(label, scenario)`` of the grid, seeds innermost; each checked with ``check_scenario``."""
        out = []
        for i, entry in enumerate(self.attacks):
            for values in itertools.product(*(self.sweep[f] for f in SWEEP_FIELDS)):
                settings = dict(zip(SWEEP_FIELDS, values))
                fields = {k: v for k, v in entry.items() if k != "label"}
                if fields["attack"] == "clean":
                    fields["attack"] = None
                for seed in self.seeds:
                    try:
                        sc = Scenario(**settings, **fields, seed=seed,
                                      robust_kwargs=dict(self.robust_kwargs) if settings["robust"] else {})
                        check_scenario(sc)
                    except (TypeError, ValueError) as err:
                        raise ValueError(f"Grid spec field attacks[{i}] ({entry['label']}): {err}") from None
                    out.append((entry["label"], sc))
        return out

    def tasks(self) -> List[GridTask]:
        """Every scenario x defence task, grouped by scenario (a scenario's defences run on one trained model)."""
        retrain = set(self.defences) if self.retrain is True else set(self.retrain or [])
        keys = [(key, *_split_defence_key(key)) for key in self.defences]  # (key, registered name, label or None)
        return [GridTask(sc, label, name, self.defences[key], key in retrain, None if tag is None else key)
                for label, sc in self.scenarios() for key, name, tag in keys]

    def as_dict(self) -> Dict[str, Any]:
        """The normalised spec (what :meth:`from_dict` reads back)."""
        return {"name": self.name, "seeds": list(self.seeds),
                "attacks": [dict(e) for e in self.attacks], "defences": {k: dict(v) for k, v in self.defences.items()},
                "retrain": self.retrain, "robust_kwargs": dict(self.robust_kwargs),
                **{f: list(v) for f, v in self.sweep.items()}}


def _check_sweep(sweep: Dict[str, List[Any]]) -> None:
    from art_backdoor_ext.datasets import DATASETS
    from art_backdoor_ext.models import FRAMEWORKS, WIDTHS

    allowed = {"dataset": DATASETS, "framework": FRAMEWORKS, "width": tuple(WIDTHS), "robust": (True, False)}
    for field, choices in allowed.items():
        bad = [v for v in sweep[field] if v not in choices or (field == "robust" and not isinstance(v, bool))]
        if bad:
            raise ValueError(f"Grid spec field {field!r} has unknown value(s) {bad}; choose from {list(choices)}.")
    for field in ("nb_epochs", "batch_size"):
        low = 0 if field == "nb_epochs" else 1
        bad = [v for v in sweep[field]
               if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low]
        if bad:
            raise ValueError(f"Grid spec field {field!r} must hold integers >= {low}; got {bad}.")


def load_spec(source: Union[str, Mapping[str, Any], GridSpec]) -> GridSpec:
    """
    A validated :class:`GridSpec` from a mapping, or from a YAML (``.yaml``/``.yml``) or JSON file. YAML is read with
    ``yaml.safe_load`` (plain data only).
    """
    if isinstance(source, (Mapping, GridSpec)):
        return GridSpec.from_dict(source)
    if not isinstance(source, str):
        raise ValueError(f"spec must be a mapping or a path to a YAML/JSON file, got {type(source).__name__}.")
    with open(source, encoding="utf-8") as f:
        text = f.read()
    if source.endswith(".json"):
        import json

        data: Optional[Any] = json.loads(text)
    else:
        try:
            import yaml
        except ImportError as err:  # pragma: no cover - PyYAML is a dependency
            raise ImportError("Reading a YAML grid spec needs PyYAML (pip install pyyaml).") from err
        data = yaml.safe_load(text)
    return GridSpec.from_dict(data)

