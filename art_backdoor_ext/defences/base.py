"""
The one contract every poison-filtering defence of this package honours, on top of ART's
:class:`~art.defences.detector.poison.PoisonFilteringDefence`:

* ``defence_params`` extends ART's list (``["classifier"]``); an unknown key, at construction, in :meth:`set_params`
  or in :meth:`detect_poison`, raises a ``ValueError`` naming the valid ones (ART's own ``set_params`` drops it);
* parameter changes are atomic: :meth:`set_params` assigns, runs ``_check_params`` and restores the previous values
  when the check fails, so a rejected value never stays set;
* the framework adapter and the validated training data follow the current ``classifier``, ``x_train`` and
  ``y_train`` attributes; the data are copied when first validated, so changing the caller's arrays afterwards
  changes nothing;
* after :meth:`detect_poison` the last result is in ``report_`` and ``is_clean_`` (1 = clean), and
  :meth:`evaluate_defence` compares ``is_clean_`` with the ground truth in ART's JSON format.

A defence implements ``_check_params`` (with the helpers of :mod:`art_backdoor_ext.utils`) and ``_detect`` returning
``(report, is_clean)``; see ``docs/architecture.md``.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from art.defences.detector.poison import PoisonFilteringDefence

from art_backdoor_ext.estimators import FrameworkAdapter, get_adapter
from art_backdoor_ext.utils import check_xy

__all__ = ["PoisonFilteringDefenceBase", "UnknownParameterError", "check_known_keys", "set_params_atomically"]


class UnknownParameterError(ValueError, TypeError):
    """A parameter name the defence does not have: a ``ValueError`` (ART's convention for bad parameters) that is
    also the ``TypeError`` Python raises for an unexpected keyword argument."""


def check_known_keys(owner: str, params: Dict[str, Any], valid: List[str]) -> None:
    """Raise :class:`UnknownParameterError` naming the valid parameters when ``params`` holds another key."""
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise UnknownParameterError(f"Unknown parameter(s) {unknown} for {owner}; valid: {', '.join(valid)}.")


def set_params_atomically(obj: Any, kwargs: Dict[str, Any], valid: List[str], check: Callable[[], None]) -> None:
    """
    Set ``kwargs`` on ``obj`` all or nothing: unknown keys raise :class:`UnknownParameterError`; when ``check()``
    rejects the new values, every parameter gets its previous value back and the error is raised.
    """
    check_known_keys(type(obj).__name__, kwargs, valid)
    previous = {key: getattr(obj, key) for key in kwargs}
    for key, value in kwargs.items():
        setattr(obj, key, value)
    try:
        check()
    except Exception:
        for key, value in previous.items():
            setattr(obj, key, value)
        raise


class PoisonFilteringDefenceBase(PoisonFilteringDefence, abc.ABC):
    """
    Base of this package's poison-filtering defences (see the module docstring for the contract).

    Subclasses list their parameters as ``defence_params = PoisonFilteringDefenceBase.defence_params + [...]``, set
    them in ``__init__`` through :meth:`_init_params`, and implement :meth:`_check_params` and :meth:`_detect`.
    """

    defence_params: List[str] = PoisonFilteringDefence.defence_params + ["verbose"]

    def __init__(self, classifier, x_train: np.ndarray, y_train: np.ndarray) -> None:
        super().__init__(classifier, x_train, y_train)
        self.report_: Optional[Dict[str, Any]] = None
        self.is_clean_: Optional[np.ndarray] = None
        self._adapter_cache: Optional[Tuple[int, FrameworkAdapter]] = None
        self._data_cache: Optional[Tuple[Tuple[int, int, int], np.ndarray, np.ndarray]] = None

    # ------------------------------------------------------------------------------------------------ parameters
    def _init_params(self, **params: Any) -> None:
        """Set the constructor's parameters, check them, and validate the data against the classifier."""
        self._check_keys(params)
        for key, value in params.items():
            setattr(self, key, value)
        self._check_params()
        self._data()  # validate (and copy) the training data now, not at the first run

    def _check_keys(self, params: Dict[str, Any]) -> None:
        check_known_keys(type(self).__name__, params, self.defence_params)

    def set_params(self, **kwargs: Any) -> None:
        """
        Set parameters atomically: unknown keys raise a ``ValueError`` naming the valid ones; when the new values fail
        the checks, every parameter keeps its previous value and the error is raised.
        """
        def check() -> None:
            self._check_params()
            if "classifier" in kwargs:
                self._data()

        set_params_atomically(self, kwargs, self.defence_params, check)

    def get_params(self) -> Dict[str, Any]:
        """The current value of every parameter in :attr:`defence_params`."""
        return {param: getattr(self, param) for param in self.defence_params}

    @abc.abstractmethod
    def _check_params(self) -> None:
        """Raise a ``ValueError`` naming the parameter and what to do when a parameter is invalid."""

    # ------------------------------------------------------------------------------------------------ state
    @property
    def _adapter(self) -> FrameworkAdapter:
        """The framework adapter of the *current* classifier."""
        if self._adapter_cache is None or self._adapter_cache[0] != id(self.classifier):
            self._adapter_cache = (id(self.classifier), get_adapter(self.classifier))
        return self._adapter_cache[1]

    def _data(self) -> Tuple[np.ndarray, np.ndarray]:
        """
        ``(x, labels)``: a validated float32 copy of ``x_train`` and integer labels, for the current ``x_train``,
        ``y_train`` and classifier (recomputed when one of them is replaced, never when the caller mutates an array).
        """
        key = (id(self.x_train), id(self.y_train), id(self.classifier))
        if self._data_cache is None or self._data_cache[0] != key:
            x, labels = check_xy(self.x_train, self.y_train, self._adapter.nb_classes, "x_train", "y_train")
            if len(x) == 0:
                raise ValueError(f"x_train is empty: {type(self).__name__} needs the training images to inspect.")
            x = self._adapter.check_input(x, "x_train")
            self._data_cache = (key, np.array(x, dtype=np.float32, copy=True), np.array(labels, copy=True))
        return self._data_cache[1], self._data_cache[2]

    @property
    def _x(self) -> np.ndarray:
        return self._data()[0]

    @property
    def _labels(self) -> np.ndarray:
        return self._data()[1]

    # ------------------------------------------------------------------------------------------------ ART API
    def detect_poison(self, **kwargs: Any) -> Tuple[Dict[str, Any], List[int]]:
        """
        Run the defence on the training set.

        :param kwargs: Any of :attr:`defence_params`, set (atomically) before running, as ART's defences do.
        :return: ``(report, is_clean)`` with ``is_clean[i] = 1`` for images kept as clean and 0 for images flagged.
        """
        if kwargs:
            self.set_params(**kwargs)
        return self._store(*self._detect())

    def _store(self, report: Dict[str, Any], is_clean) -> Tuple[Dict[str, Any], List[int]]:
        """Keep a run's result in ``report_`` / ``is_clean_`` and return it in ART's form."""
        is_clean = np.asarray(is_clean, dtype=int).ravel()
        if len(is_clean) != len(self._x):
            raise RuntimeError(f"{type(self).__name__} marked {len(is_clean)} images for {len(self._x)} training "
                               "images.")
        self.report_, self.is_clean_ = report, is_clean
        return report, is_clean.tolist()

    @abc.abstractmethod
    def _detect(self) -> Tuple[Dict[str, Any], np.ndarray]:
        """Run the method with the current parameters; return ``(report, is_clean)``."""

    def evaluate_defence(self, is_clean: np.ndarray, **kwargs: Any) -> str:
        """
        Confusion matrix of the last :meth:`detect_poison` marking (run now with ``kwargs`` if there is none) against
        the ground truth, per class, in the JSON format of ART's ``GroundTruthEvaluator``.

        :param is_clean: Ground truth: 1 for clean and 0 for poisoned training images.
        """
        from art.defences.detector.poison.ground_truth_evaluator import GroundTruthEvaluator

        if self.is_clean_ is None or kwargs:
            self.detect_poison(**kwargs)
        labels = self._labels
        truth = np.asarray(is_clean).ravel()
        if len(truth) != len(labels):
            raise ValueError(f"is_clean must have one entry per training image ({len(labels)}), got {len(truth)}.")
        if not np.isin(truth, (0, 1)).all():
            raise ValueError("is_clean must contain only 0 (poisoned) and 1 (clean).")
        truth = truth.astype(int)
        classes = range(self._adapter.nb_classes)
        assigned = [self.is_clean_[labels == c] for c in classes]
        expected = [truth[labels == c] for c in classes]
        _, json_report = GroundTruthEvaluator().analyze_correctness(assigned, expected)
        return json_report
