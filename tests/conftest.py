"""
Shared fixtures. Training dominates the suite's time, so trained scenarios are cached for the whole session:
tests that need the same poisoned model ask for the same :class:`Scenario` through ``scenario_ctx`` and share it.
Keep scenarios few and small (mnist-5k, compact or wide CNN, a handful of epochs).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from art_backdoor_ext.estimators import load_torch_before_tensorflow  # noqa: E402

load_torch_before_tensorflow()  # torch's triton import segfaults once TensorFlow is loaded

import dataclasses  # noqa: E402
import json  # noqa: E402
from typing import Dict  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

_CACHE: Dict[str, object] = {}


def _key(scenario) -> str:
    return json.dumps(dataclasses.asdict(scenario), sort_keys=True, default=str)


@pytest.fixture(scope="session")
def scenario_ctx():
    """
    ``scenario_ctx(Scenario(...))`` -> a trained :class:`ScenarioContext`, cached per distinct scenario for the
    session. Treat the returned context (and its classifier) as read-only: clone before modifying.
    """
    from art_backdoor_ext.evaluation import _ensure_registered, prepare_scenario

    _ensure_registered()

    def get(scenario):
        key = _key(scenario)
        if key not in _CACHE:
            _CACHE[key] = prepare_scenario(scenario)
        return _CACHE[key]

    return get


@pytest.fixture(scope="session")
def mnist5k():
    """mnist-5k, channels-first (PyTorch layout)."""
    from art_backdoor_ext.datasets import load_dataset

    return load_dataset("mnist-5k", channels_first=True)


@pytest.fixture(scope="session")
def mnist5k_nhwc():
    """mnist-5k, channels-last (Keras layout)."""
    from art_backdoor_ext.datasets import load_dataset

    return load_dataset("mnist-5k", channels_first=False)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn digits, channels-first."""
    from art_backdoor_ext.datasets import load_dataset

    return load_dataset("digits", channels_first=True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
