"""
The contract every poison-filtering defence of the package honours (art_backdoor_ext.defences.base), checked for
every defence class by parametrisation, as scikit-learn's ``check_estimator`` does: unknown keys raise, parameter
changes are atomic, ``set_params(classifier=...)`` is honoured, inputs are neither mutated nor aliased, the global
random generators are untouched, the last result is kept in ``report_`` / ``is_clean_``, and ``evaluate_defence``
returns ART's JSON. Small data (600 digits images) and cheap settings keep it fast.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from art_backdoor_ext.defences.detector.poison import (AEGISDefence, ClusterImpurityDefence, NeuralCleanseDefence,
                                                      ReverseEngineeringDefence)
from art_backdoor_ext.defences.transformer.poisoning import FinePruning

# cheap settings per defence, and one parameter with a valid and an invalid value
CASES = {
    AEGISDefence: (dict(nb_seeds=6, max_iter=5, tsne_iter=250, robustness_check=False, max_train_per_class=20),
                   ("nb_seeds", 8, 1)),
    ClusterImpurityDefence: (dict(max_components=3), ("threshold", 0.4, -1.0)),
    ReverseEngineeringDefence: (dict(max_iter=6, batch_size=4), ("theta", 0.01, 1.5)),
    NeuralCleanseDefence: (dict(nb_epochs=3, steps_per_epoch=2, batch_size=8), ("anomaly_threshold", 3.0, -1.0)),
}
DEFENCES = list(CASES)


@pytest.fixture(scope="module")
def data(digits):
    from art_backdoor_ext.attacks.poisoning import localised_trigger, poison_dataset

    (x, y), _ = digits
    x, y = x[:600], y[:600]
    poisoned = poison_dataset(x, y, localised_trigger(size=2), target=1, sources=[2, 3], n_per_source=15, seed=0)
    return poisoned.x, poisoned.y, poisoned.is_poison


@pytest.fixture(scope="module")
def classifiers(data):
    from art_backdoor_ext.models import make_classifier

    x, y, _ = data
    trained = make_classifier("pytorch", x_train=x, y_train=y, nb_epochs=4, seed=0)
    other = make_classifier("pytorch", x_train=x, y_train=y, nb_epochs=4, seed=1)
    return trained, other


def _make(cls, classifier, x, y, **kw):
    params, _ = CASES[cls]
    return cls(classifier, x, y, **{**params, **kw})


def _same_result(a, b):
    (rep_a, clean_a), (rep_b, clean_b) = a, b
    assert clean_a == clean_b
    assert rep_a["detected"] == rep_b["detected"] and rep_a["target_class"] == rep_b["target_class"]


@pytest.mark.parametrize("cls", DEFENCES, ids=lambda c: c.__name__)
def test_defence_params_extend_arts_list(cls):
    from art.defences.detector.poison import PoisonFilteringDefence

    assert cls.defence_params[: len(PoisonFilteringDefence.defence_params)] == PoisonFilteringDefence.defence_params
    assert len(set(cls.defence_params)) == len(cls.defence_params)


@pytest.mark.parametrize("cls", DEFENCES, ids=lambda c: c.__name__)
def test_unknown_keys_raise_everywhere(cls, data, classifiers):
    x, y, _ = data
    with pytest.raises(ValueError, match="Unknown parameter.*valid: classifier"):
        _make(cls, classifiers[0], x, y, no_such_param=5)
    defence = _make(cls, classifiers[0], x, y)
    with pytest.raises(ValueError, match="Unknown parameter"):
        defence.set_params(no_such_param=5)
    with pytest.raises(ValueError, match="Unknown parameter"):
        defence.detect_poison(no_such_param=5)
    assert defence.report_ is None and defence.is_clean_ is None


@pytest.mark.parametrize("cls", DEFENCES, ids=lambda c: c.__name__)
def test_parameter_changes_are_atomic(cls, data, classifiers):
    x, y, _ = data
    name, good, bad = CASES[cls][1]
    defence = _make(cls, classifiers[0], x, y)
    before = defence.get_params()
    with pytest.raises(ValueError, match=name):
        defence.set_params(**{name: bad})
    with pytest.raises(ValueError, match=name):
        defence.detect_poison(**{name: bad, "verbose": True})
    assert defence.get_params() == before  # neither the bad value nor its companion stayed set
    defence.set_params(**{name: good})
    assert getattr(defence, name) == good
    with pytest.raises(ValueError, match=name):
        _make(cls, classifiers[0], x, y, **{name: bad})


@pytest.mark.parametrize("cls", DEFENCES, ids=lambda c: c.__name__)
def test_run_keeps_result_and_touches_nothing(cls, data, classifiers):
    import torch

    from art_backdoor_ext.estimators import get_adapter

    x, y, is_poison = data
    x_in, y_in = x.copy(), y.copy()
    weights = [w.copy() for w in get_adapter(classifiers[0]).get_weights()]
    np.random.seed(123)
    torch.manual_seed(123)
    np_state, torch_state = np.random.get_state(), torch.get_rng_state()
    defence = _make(cls, classifiers[0], x_in, y_in)
    x_in[:] = 0.5  # the caller changes its arrays after construction: the defence kept its own copy
    y_in[:] = 0
    report, is_clean = defence.detect_poison()
    # the global generators are untouched
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and np.random.get_state()[2] == np_state[2]
    assert torch.equal(torch.get_rng_state(), torch_state)
    for a, b in zip(weights, get_adapter(classifiers[0]).get_weights()):
        np.testing.assert_array_equal(a, b)
    # the result is kept and is the one a defence on untouched arrays gives
    assert defence.report_ is report and list(defence.is_clean_) == is_clean
    assert len(is_clean) == len(x) and set(is_clean) <= {0, 1}
    for key in ("detected", "target_class", "suspected_classes", "seconds"):
        assert key in report
    _same_result((report, is_clean), _make(cls, classifiers[0], x, y).detect_poison())
    # evaluate_defence compares the kept marking with the ground truth in ART's JSON, per class
    confusion = json.loads(defence.evaluate_defence(1 - is_poison.astype(int)))
    assert set(confusion) == {f"class_{c}" for c in range(10)}
    flagged_poison = sum(v["TruePositive"]["numerator"] for v in confusion.values())
    assert flagged_poison == int(np.sum((np.asarray(is_clean) == 0) & is_poison))


@pytest.mark.parametrize("cls", DEFENCES, ids=lambda c: c.__name__)
def test_set_params_classifier_is_honoured(cls, data, classifiers):
    x, y, _ = data
    trained, other = classifiers
    switched = _make(cls, trained, x, y)
    switched.set_params(classifier=other)
    assert switched._adapter.classifier is other  # pylint: disable=protected-access
    _same_result(switched.detect_poison(), _make(cls, other, x, y).detect_poison())
    with pytest.raises(ValueError):
        switched.set_params(classifier=object())
    assert switched.classifier is other


def test_fine_pruning_parameters_are_checked_and_atomic(classifiers):
    pruner = FinePruning(classifiers[0])
    with pytest.raises(ValueError, match="Unknown parameter.*valid: layer"):
        pruner.set_params(max_acc_dorp=0.1)
    with pytest.raises(ValueError, match="max_acc_drop"):
        pruner.set_params(max_acc_drop=2.0, nb_epochs=3)
    assert pruner.max_acc_drop == 0.04 and pruner.nb_epochs == 20  # defaults kept
    with pytest.raises(ValueError, match="seed"):
        FinePruning(classifiers[0], seed=-1)
