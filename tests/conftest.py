"""
Shared fixtures. Training dominates the suite's time, so trained scenarios are cached for the whole session:
tests that need the same poisoned model ask for the same :class:`Scenario` through ``scenario_ctx`` and share it.
Keep scenarios few and small (mnist-5k, compact or wide CNN, a handful of epochs).

A shared context is read-only: its arrays are made non-writeable (an in-place write raises), and after every test
module the weights of every shared classifier are compared with their values when it was trained, so a test that
changes a shared model fails loudly instead of changing what later tests see. Tests clone before modifying.
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
_WEIGHTS: Dict[str, str] = {}


def _key(scenario) -> str:
    return json.dumps(dataclasses.asdict(scenario), sort_keys=True, default=str)


@pytest.fixture(scope="session")
def scenario_ctx():
    """
    ``scenario_ctx(Scenario(...))`` -> a trained :class:`ScenarioContext`, cached per distinct scenario for the
    session. Treat the returned context (and its classifier) as read-only: clone before modifying.
    """
    from art_backdoor_ext.evaluation import prepare_scenario

    def get(scenario):
        key = _key(scenario)
        if key not in _CACHE:
            ctx = prepare_scenario(scenario)
            for name in ("x_train", "y_train", "is_poison", "x_test", "y_test", "x_clean", "y_clean"):
                getattr(ctx, name).flags.writeable = False
            _CACHE[key] = ctx
            _WEIGHTS[key] = _digest(ctx.classifier)
        return _CACHE[key]

    return get


def _digest(classifier) -> str:
    import hashlib

    from art_backdoor_ext.estimators import get_adapter

    h = hashlib.sha256()
    for w in get_adapter(classifier).get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module", autouse=True)
def _shared_models_untouched(request):
    """After each test module: every shared classifier still has the weights it was trained with."""
    yield
    changed = [key for key, ctx in _CACHE.items() if _digest(ctx.classifier) != _WEIGHTS[key]]
    assert not changed, f"{request.module.__name__} modified shared classifiers (clone first): {changed}"


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
