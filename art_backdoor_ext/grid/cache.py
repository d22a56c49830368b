"""
The grid's on-disk cache: poisoned training sets, trained (and robust-trained) models and defence results, each under
a content hash of everything that determines it, so an interrupted grid resumes where it stopped.

Layout under the cache folder (``<key>`` is the SHA-256 of the entry's canonical JSON settings, the package version
included)::

    poisoned/<key>.npz   <key>.json     # x, y, is_poison (np.savez, read with allow_pickle=False)
    models/<key>.pt|.keras <key>.json   # weights only: PyTorch state dict / Keras .keras archive
    results/<key>.json                  # one defence on one scenario: the table fields and scores

A cache must not be a way to run code on its user, nor to feed them wrong numbers silently:

* nothing from the cache is unpickled: arrays are read with ``allow_pickle=False``, PyTorch weights with
  ``torch.load(weights_only=True)``, Keras archives with ``safe_mode=True``, everything else is JSON;
* every entry records its settings, its key and the SHA-256 of its payload; an entry whose settings do not hash to its
  key, or whose payload does not match its checksum, or that does not load, is recomputed (with a warning), never
  trusted;
* writes are atomic (a temporary file in the same folder, then ``os.replace``), payload first and its JSON record last,
  so a killed run leaves either a complete entry or none that a later run would read.

The checksums detect corruption and careless edits; they are not signatures (whoever can write the folder can write a
consistent entry), which is why the formats above carry no code.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import warnings
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

import art_backdoor_ext
from art_backdoor_ext.evaluation.api import Scenario, ScenarioContext

logger = logging.getLogger(__name__)

__all__ = ["GridCache", "canonical", "content_key", "scenario_settings", "poison_settings"]

FORMAT = 1


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} cannot be part of a cache key.")


def canonical(obj: Any) -> str:
    """The canonical JSON text of ``obj`` (sorted keys, numpy scalars as Python numbers), what keys are hashed from."""
    return json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))


def content_key(kind: str, settings: Dict[str, Any]) -> str:
    """SHA-256 of the entry kind, the package version and the canonical settings."""
    payload = canonical({"kind": kind, "version": art_backdoor_ext.__version__, "settings": settings})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def scenario_settings(scenario: Scenario) -> Dict[str, Any]:
    """Everything that determines a trained model: every field of the scenario (seed included)."""
    settings = dataclasses.asdict(scenario)
    if settings["attack"] == "clean":
        settings["attack"] = None
    if isinstance(settings["sources"], (tuple, np.ndarray)):
        settings["sources"] = list(settings["sources"])
    return json.loads(canonical(settings))


def poison_settings(scenario: Scenario) -> Dict[str, Any]:
    """What determines a poisoned training set: the data, the attack and its settings, the seed (not the model)."""
    settings = scenario_settings(scenario)
    keep = ("dataset", "framework", "seed", "attack", "attack_kwargs", "target", "sources", "n_per_source", "fraction")
    return {k: settings[k] for k in keep}


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(tmp)`` on a temporary file in the same folder, then rename it into place."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_json(path: str, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True, default=_json_default)

    _atomic_write(path, write)


class _Invalid(Exception):
    """A cache entry that failed a check (the message says which)."""


class GridCache:
    """
    Content-addressed cache of the grid's work (see the module docstring for the layout and the safety rules).

    It is the ``store`` of :func:`art_backdoor_ext.evaluation.runner.prepare_scenario` (poisoned sets and models) and
    holds the defence results. ``counts`` tallies what was computed (``"poisoned"``, ``"trained"``, ``"defence"``) and
    what was reused (``"poisoned_hit"``, ``"trained_hit"``, ``"defence_hit"``) and rejected (``"invalid"``).

    :param root: Cache folder (created when missing).
    :param force: Ignore existing entries: recompute everything and overwrite.
    """

    def __init__(self, root: str, force: bool = False) -> None:
        if not isinstance(root, (str, os.PathLike)) or not str(root):
            raise ValueError(f"root must be a folder path, got {root!r}.")
        self.root = os.path.abspath(os.fspath(root))
        self.force = bool(force)
        self.counts: collections.Counter = collections.Counter()
        for sub in ("poisoned", "models", "results"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)

    # ------------------------------------------------------------------------------------------------ generic entries
    def _path(self, sub: str, key: str, suffix: str) -> str:
        return os.path.join(self.root, sub, key + suffix)

    def _record(self, kind: str, key: str, settings: Dict[str, Any], **fields: Any) -> Dict[str, Any]:
        return {"format": FORMAT, "kind": kind, "key": key, "version": art_backdoor_ext.__version__,
                "settings": settings, **fields}

    def _read_record(self, path: str, kind: str, key: str) -> Dict[str, Any]:
        """The JSON record at ``path`` after checking that it describes entry ``key`` of ``kind``."""
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError) as err:
            raise _Invalid(f"unreadable record ({err})") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("kind") != kind:
            raise _Invalid("not a record of this kind and format")
        if record.get("key") != key or content_key(kind, record.get("settings")) != key:
            raise _Invalid("its settings do not hash to its key")
        return record

    def _reject(self, path: str, why: str) -> None:
        self.counts["invalid"] += 1
        warnings.warn(f"Cache entry {path} failed its check ({why}); recomputing it.", stacklevel=3)

    # ------------------------------------------------------------------------------------------------ poisoned sets
    def poisoned(self, scenario: Scenario, compute: Callable[[], Tuple[np.ndarray, np.ndarray, np.ndarray]]):
        """``(x, y, is_poison)`` of the scenario's poisoned training set, from the cache or from ``compute()``."""
        settings = poison_settings(scenario)
        key = content_key("poisoned", settings)
        data_path, record_path = self._path("poisoned", key, ".npz"), self._path("poisoned", key, ".json")
        if not self.force and os.path.exists(record_path):
            try:
                record = self._read_record(record_path, "poisoned", key)
                if _sha256_file(data_path) != record.get("sha256"):
                    raise _Invalid("checksum mismatch")
                with np.load(data_path, allow_pickle=False) as npz:
                    x, y, is_poison = npz["x"], npz["y"], npz["is_poison"]
                if not len(x) == len(y) == len(is_poison) or is_poison.dtype != bool:
                    raise _Invalid("inconsistent arrays")
                self.counts["poisoned_hit"] += 1
                return x, y, is_poison
            except (_Invalid, OSError, ValueError, KeyError) as err:
                self._reject(data_path, str(err))
        x, y, is_poison = compute()
        self.counts["poisoned"] += 1
        arrays = {"x": np.asarray(x), "y": np.asarray(y), "is_poison": np.asarray(is_poison, bool)}
        _atomic_write(data_path, lambda tmp: np.savez(tmp, **arrays))
        _write_json(record_path, self._record("poisoned", key, settings, sha256=_sha256_file(data_path)))
        return x, y, is_poison

    # ------------------------------------------------------------------------------------------------ trained models
    def model_key(self, scenario: Scenario) -> str:
        """The key of the scenario's trained model."""
        return content_key("model", scenario_settings(scenario))

    def model(self, ctx: ScenarioContext, compute: Callable[[], Tuple[Any, float]]) -> Tuple[Any, float]:
        """
        ``(classifier, train_seconds)`` for the scenario of ``ctx``: a fresh reference classifier with the cached
        weights loaded on the classifier's device, or ``compute()`` (training), whose weights are then stored.
        ``train_seconds`` of a cached model is the time its training took.
        """
        from art_backdoor_ext.estimators import get_adapter
        from art_backdoor_ext.models import make_classifier

        sc = ctx.scenario
        settings = scenario_settings(sc)
        key = content_key("model", settings)
        record_path = self._path("models", key, ".json")
        shape = list(ctx.x_train.shape[1:])
        if not self.force and os.path.exists(record_path):
            weights_path = record_path
            try:
                record = self._read_record(record_path, "model", key)
                suffix = record.get("suffix")
                if suffix not in (".pt", ".keras"):
                    raise _Invalid(f"unknown weights format {suffix!r}")
                weights_path = self._path("models", key, suffix)
                if _sha256_file(weights_path) != record.get("sha256"):
                    raise _Invalid("checksum mismatch")
                if record.get("input_shape") != shape or record.get("nb_classes") != ctx.nb_classes:
                    raise _Invalid("the model does not fit this data")
                classifier = make_classifier(sc.framework, input_shape=shape, nb_classes=ctx.nb_classes,
                                             width=sc.width, nb_epochs=0, seed=sc.seed)
                get_adapter(classifier).load_weights(weights_path)
                self.counts["trained_hit"] += 1
                return classifier, float(record.get("train_seconds", float("nan")))
            except Exception as err:  # pylint: disable=broad-except  (any failure to load means: recompute)
                self._reject(weights_path, f"{type(err).__name__}: {err}")
        classifier, seconds = compute()
        self.counts["trained"] += 1
        adapter = get_adapter(classifier)
        weights_path = self._path("models", key, adapter.weights_suffix)
        _atomic_write(weights_path, adapter.save_weights)
        _write_json(record_path, self._record("model", key, settings, suffix=adapter.weights_suffix,
                                              sha256=_sha256_file(weights_path), train_seconds=float(seconds),
                                              input_shape=shape, nb_classes=int(ctx.nb_classes)))
        return classifier, seconds

    # ------------------------------------------------------------------------------------------------ defence results
    @staticmethod
    def result_settings(scenario: Scenario, defence: str, defence_kwargs: Dict[str, Any],
                        retrain: bool) -> Dict[str, Any]:
        """What determines one defence result: the model's settings, the defence, its arguments, retraining."""
        return {"scenario": scenario_settings(scenario), "defence": defence,
                "defence_kwargs": json.loads(canonical(defence_kwargs)), "retrain": bool(retrain)}

    def result_key(self, scenario: Scenario, defence: str, defence_kwargs: Dict[str, Any], retrain: bool) -> str:
        return content_key("result", self.result_settings(scenario, defence, defence_kwargs, retrain))

    def get_result(self, scenario: Scenario, defence: str, defence_kwargs: Dict[str, Any],
                   retrain: bool) -> Optional[Dict[str, Any]]:
        """A cached, checked defence result, or None (missing, rejected, or ``force``)."""
        key = self.result_key(scenario, defence, defence_kwargs, retrain)
        path = self._path("results", key, ".json")
        if self.force or not os.path.exists(path):
            return None
        try:
            record = self._read_record(path, "result", key)
            payload = record.get("payload")
            if not isinstance(payload, dict) or hashlib.sha256(canonical(payload).encode()).hexdigest() \
                    != record.get("sha256"):
                raise _Invalid("checksum mismatch")
        except _Invalid as err:
            self._reject(path, str(err))
            return None
        self.counts["defence_hit"] += 1
        return payload

    def put_result(self, scenario: Scenario, defence: str, defence_kwargs: Dict[str, Any], retrain: bool,
                   payload: Dict[str, Any]) -> None:
        """Store one defence result (``payload``: JSON-safe)."""
        settings = self.result_settings(scenario, defence, defence_kwargs, retrain)
        key = content_key("result", settings)
        payload = json.loads(canonical(payload))
        digest = hashlib.sha256(canonical(payload).encode()).hexdigest()
        _write_json(self._path("results", key, ".json"), self._record("result", key, settings, payload=payload,
                                                                      sha256=digest))
