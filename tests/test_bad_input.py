"""
Every public entry fed bad input (issue 17): datasets, models, triggers, attacks, ``poison_dataset``, the defences,
the metrics and the harness. Each case must end in a ``ValueError``/``TypeError`` whose message names the argument
(and, for images, says what to do), or in the documented warning / inconclusive report; never in a crash, a
traceback from another library or a silent answer. Also: the global numpy, torch and Python generators are untouched
by every defence and attack, and inputs changed by the caller afterwards change nothing.

Small data only (digits, a compact CNN trained for a fraction of a second), so the module runs in well under a minute
on two cores. The defences' own contract (atomic parameters, inputs copied, generators untouched under the cheap
settings) is also checked class by class in ``tests/defences/test_contract.py``.
"""
from __future__ import annotations

import random
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from art_backdoor_ext.attacks.poisoning import (add_distributed_trigger, add_localised_trigger, add_pattern,
                                                distributed_trigger, isolated_pixels_pattern, localised_trigger,
                                                make_pattern, pattern_trigger, poison_dataset)
from art_backdoor_ext.metrics import accuracy, attack_success_rate, filtering_rates, latent_separability

SCALE = r"scale your images to \[0, 1\]"
TO_NCHW = r"np\.transpose\(x, \(0, 3, 1, 2\)\)"


@pytest.fixture(scope="module")
def s(digits):
    """A small trained PyTorch CNN on 300 digits (8-bit grid), 150 test images, and helpers."""
    from art_backdoor_ext.models import make_classifier

    (x, y), (xt, yt) = digits
    x = (np.round(x[:300] * 255) / 255).astype(np.float32)
    xt = (np.round(xt[:150] * 255) / 255).astype(np.float32)
    clf = make_classifier("pytorch", x_train=x, y_train=y[:300], nb_epochs=10, batch_size=32, learning_rate=3e-3,
                          seed=0)
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    return SimpleNamespace(clf=clf, x=x, y=y[:300].copy(), xt=xt, yt=yt[:150].copy(), nan=nan,
                           nhwc=np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1))), onehot=np.eye(10)[y[:300]])


def _defence(name):
    from art_backdoor_ext.defences.detector import poison

    return getattr(poison, name)


CHEAP = {
    "AEGISDefence": dict(nb_seeds=3, max_iter=3, tsne_iter=250, robustness_check=False),
    "ClusterImpurityDefence": dict(max_components=3),
    "ReverseEngineeringDefence": dict(max_iter=6, batch_size=4),
    "NeuralCleanseDefence": dict(nb_epochs=2, steps_per_epoch=2, batch_size=8),
}


def _fp(s, **kw):
    from art_backdoor_ext.defences.transformer.poisoning import FinePruning

    return FinePruning(s.clf, **{"nb_epochs": 0, "min_clean": 10, **kw})


def _invisible(**kw):
    from art_backdoor_ext.attacks.poisoning import PoisoningAttackInvisibleBackdoor

    return PoisoningAttackInvisibleBackdoor(**kw)


def _adversarial(s, **kw):
    from art_backdoor_ext.attacks.poisoning import PoisoningAttackAdversarialTrigger

    return PoisoningAttackAdversarialTrigger(s.clf, **{"target": 1, "max_passes": 1, "max_iter": 3, **kw})


def _targets(n, target=1):
    return np.eye(10)[np.full(n, target)]


# ------------------------------------------------------------------------------------------------ error cases
# id -> (call(s), exception, pattern the message must match (it names the argument))
CASES = {
    # datasets
    "load_dataset/name": (lambda s: _load("nope"), ValueError, "dataset 'nope'"),
    "load_dataset/seed": (lambda s: _load("digits", seed=-1), ValueError, "seed"),
    "load_dataset/seed-float": (lambda s: _load("digits", seed=1.5), ValueError, "seed"),
    "load_dataset/test_size": (lambda s: _load("digits", test_size="a"), ValueError, "test_size"),
    "load_dataset/channels_first": (lambda s: _load("digits", channels_first="yes"), ValueError, "channels_first"),
    "load_dataset/image_size": (lambda s: _load("gtsrb", image_size=0), ValueError, "image_size"),
    # models
    "make_classifier/framework": (lambda s: _make("jax"), ValueError, "framework"),
    "make_classifier/nb_classes": (lambda s: _make(nb_classes=2.5), ValueError, "nb_classes"),
    "make_classifier/nb_epochs": (lambda s: _make(x_train=s.x[:20], y_train=s.y[:20], nb_epochs=1.5), ValueError,
                                  "nb_epochs"),
    "make_classifier/batch_size": (lambda s: _make(batch_size=0), ValueError, "batch_size"),
    "make_classifier/learning_rate": (lambda s: _make(learning_rate=-1.0), ValueError, "learning_rate"),
    "make_classifier/seed": (lambda s: _make(seed=-1), ValueError, "seed"),
    "make_classifier/width": (lambda s: _make(width="huge"), ValueError, "width"),
    "make_classifier/0-255": (lambda s: _make(x_train=s.x[:20] * 255, y_train=s.y[:20]), ValueError,
                              "x_train .*" + SCALE),
    "make_classifier/nan": (lambda s: _make(x_train=s.nan[:20], y_train=s.y[:20]), ValueError, "x_train contains NaN"),
    "make_classifier/layout": (lambda s: _make(x_train=s.nhwc[:20], y_train=s.y[:20]), ValueError,
                               "x_train .*" + TO_NCHW),
    "make_classifier/label": (lambda s: _make(x_train=s.x[:20], y_train=np.full(20, 12)), ValueError,
                              "y_train holds label 12"),
    "make_classifier/x-without-y": (lambda s: _make(x_train=s.x[:20]), ValueError, "y_train"),
    "train_robust/0-255": (lambda s: _robust(s, s.x[:20] * 255, s.y[:20]), ValueError, "x .*" + SCALE),
    "train_robust/layout": (lambda s: _robust(s, s.nhwc[:20], s.y[:20]), ValueError, "x .*" + TO_NCHW),
    "train_robust/eps": (lambda s: _robust(s, s.x[:20], s.y[:20], eps=0), ValueError, "eps"),
    "train_robust/ratio": (lambda s: _robust(s, s.x[:20], s.y[:20], ratio=2), ValueError, "ratio"),
    "train_robust/max_iter": (lambda s: _robust(s, s.x[:20], s.y[:20], max_iter=1.5), ValueError, "max_iter"),
    "train_robust/seed": (lambda s: _robust(s, s.x[:20], s.y[:20], seed=None), ValueError, "seed"),
    # triggers and patterns
    "localised_trigger/size": (lambda s: localised_trigger(size=2.5), ValueError, "size"),
    "localised_trigger/value": (lambda s: localised_trigger(value=2.0), ValueError, "value"),
    "localised_trigger/margin": (lambda s: localised_trigger(margin=-1), ValueError, "margin"),
    "localised_trigger/0-255": (lambda s: localised_trigger(size=2)(s.x[:3] * 255), ValueError, "x .*" + SCALE),
    "localised_trigger/nan": (lambda s: localised_trigger(size=2)(s.nan[:3]), ValueError, "x contains NaN"),
    "add_localised_trigger/[-1,1]": (lambda s: add_localised_trigger(s.x[:3] * 2 - 1, size=2), ValueError,
                                     r"x .*\(x \+ 1\) / 2"),
    "distributed_trigger/size": (lambda s: distributed_trigger(size=0), ValueError, "size"),
    "add_distributed_trigger/inf": (lambda s: add_distributed_trigger(s.x[:3] + np.inf, size=1), ValueError,
                                    "x contains NaN or infinite"),
    "add_distributed_trigger/empty": (lambda s: add_distributed_trigger(s.x[:0], size=1), ValueError, "x is empty"),
    "add_pattern/0-255": (lambda s: add_pattern(s.x[:3] * 255, make_pattern("A", (1, 8, 8))), ValueError,
                          "x .*" + SCALE),
    "add_pattern/nan-pattern": (lambda s: add_pattern(s.x[:3], np.full((1, 8, 8), np.nan)), ValueError, "pattern"),
    "add_pattern/quantise": (lambda s: add_pattern(s.x[:3], make_pattern("A", (1, 8, 8)), quantise="yes"),
                             ValueError, "quantise"),
    "make_pattern/kind": (lambda s: make_pattern("Z", (1, 8, 8)), ValueError, "kind"),
    "make_pattern/seed": (lambda s: make_pattern("E", (1, 8, 8), seed=-1), ValueError, "seed"),
    "make_pattern/size": (lambda s: make_pattern("C", (1, 8, 8), size=1.5), ValueError, "size"),
    "make_pattern/magnitude-vanishes": (lambda s: make_pattern("A", (1, 8, 8), magnitude=0.001), ValueError,
                                        "magnitude .* half a grey level"),
    "make_pattern/magnitude-range": (lambda s: make_pattern("A", (1, 8, 8), magnitude=2.0), ValueError, "magnitude"),
    "make_pattern/patch": (lambda s: make_pattern("A", (1, 8, 8), patch=0), ValueError, "patch"),
    "make_pattern/shape": (lambda s: make_pattern("A", (1, 2, 3, 4, 5)), ValueError, "image_shape"),
    "pattern_trigger/nan": (lambda s: pattern_trigger(np.full((1, 8, 8), np.nan)), ValueError, "pattern"),
    "pattern_trigger/0-255": (lambda s: pattern_trigger(np.full((1, 8, 8), 80.0)), ValueError,
                              r"pattern .*\[-1, 1\].*divide it by 255"),
    "isolated_pixels_pattern/nb_pixels": (lambda s: isolated_pixels_pattern((1, 8, 8), nb_pixels=2.5), ValueError,
                                          "nb_pixels"),
    "isolated_pixels_pattern/seed": (lambda s: isolated_pixels_pattern((1, 8, 8), seed=-1), ValueError, "seed"),
    "isolated_pixels_pattern/value": (lambda s: isolated_pixels_pattern((1, 8, 8), value=0), ValueError, "value"),
    # attacks
    "InvisibleBackdoor/seed": (lambda s: _invisible(seed=-1), ValueError, "seed"),
    "InvisibleBackdoor/kind": (lambda s: _invisible(pattern="Z"), ValueError, "pattern kind"),
    "InvisibleBackdoor/nan-pattern": (lambda s: _invisible(pattern=np.full((1, 8, 8), np.nan)), ValueError,
                                      "pattern array"),
    "InvisibleBackdoor/size": (lambda s: _invisible(pattern="C", size=0), ValueError, "size"),
    "InvisibleBackdoor/0-255": (lambda s: _invisible(image_shape=(1, 8, 8)).poison(s.x[:3] * 255, _targets(3)),
                                ValueError, "x .*" + SCALE),
    "InvisibleBackdoor/no-y": (lambda s: _invisible(image_shape=(1, 8, 8)).poison(s.x[:3]), ValueError, "`y`"),
    "AdversarialTrigger/target": (lambda s: _adversarial(s, target=15), ValueError, "target"),
    "AdversarialTrigger/target-float": (lambda s: _adversarial(s, target=1.5), ValueError, "target"),
    "AdversarialTrigger/max_passes": (lambda s: _adversarial(s, max_passes=1.5), ValueError, "max_passes"),
    "AdversarialTrigger/norm_bound": (lambda s: _adversarial(s, norm_bound=0), ValueError, "norm_bound"),
    "AdversarialTrigger/fooling_rate": (lambda s: _adversarial(s, fooling_rate=2), ValueError, "fooling_rate"),
    "AdversarialTrigger/nan": (lambda s: _adversarial(s).generate_pattern(s.nan[:5]), ValueError,
                               "x_source contains NaN"),
    "AdversarialTrigger/0-255": (lambda s: _adversarial(s).generate_pattern(s.x[:5] * 255), ValueError,
                                 "x_source .*" + SCALE),
    "AdversarialTrigger/layout": (lambda s: _adversarial(s).generate_pattern(s.nhwc[:5]), ValueError,
                                  "x_source .*" + TO_NCHW),
    "AdversarialTrigger/empty": (lambda s: _adversarial(s).generate_pattern(s.x[:0]), ValueError, "x_source"),
    "AdversarialTrigger/not-generated": (lambda s: _adversarial(s).poison(s.x[:3], _targets(3)), ValueError,
                                         "generate_pattern"),
    # poison_dataset
    "poison_dataset/0-255": (lambda s: _poison(s, x=s.x * 255), ValueError, "x .*" + SCALE),
    "poison_dataset/[-1,1]": (lambda s: _poison(s, x=s.x * 2 - 1), ValueError, r"x .*\(x \+ 1\) / 2"),
    "poison_dataset/nan-x": (lambda s: _poison(s, x=s.nan), ValueError, "x contains NaN"),
    "poison_dataset/nan-trigger": (lambda s: _poison(s, trigger=lambda v: v * np.nan), ValueError, "NaN"),
    "poison_dataset/0-255-trigger": (lambda s: _poison(s, trigger=lambda v: v * 255), ValueError,
                                     "triggered images"),
    "poison_dataset/not-callable": (lambda s: _poison(s, trigger=3), ValueError, "perturbation_or_attack"),
    "poison_dataset/nb_classes-small": (lambda s: _poison(s, nb_classes=5), ValueError, "nb_classes is 5"),
    "poison_dataset/nb_classes-0": (lambda s: _poison(s, nb_classes=0), ValueError, "nb_classes"),
    "poison_dataset/target": (lambda s: _poison(s, target=15), ValueError, "target"),
    "poison_dataset/target-float": (lambda s: _poison(s, target=1.0), ValueError, "target"),
    "poison_dataset/sources-float": (lambda s: _poison(s, sources=[2.5]), ValueError, "sources"),
    "poison_dataset/sources-target": (lambda s: _poison(s, sources=[1, 2]), ValueError, "sources"),
    "poison_dataset/fraction": (lambda s: _poison(s, n_per_source=None, fraction=1.5), ValueError, "fraction"),
    "poison_dataset/both": (lambda s: _poison(s, fraction=0.1), ValueError, "n_per_source"),
    "poison_dataset/n_per_source": (lambda s: _poison(s, n_per_source=2.5), ValueError, "n_per_source"),
    "poison_dataset/n_per_source-too-many": (lambda s: _poison(s, n_per_source=500), ValueError, "Source class 2"),
    "poison_dataset/seed": (lambda s: _poison(s, seed=-1), ValueError, "seed"),
    "poison_dataset/remove_originals": (lambda s: _poison(s, remove_originals="no"), ValueError, "remove_originals"),
    "poison_dataset/seed-none": (lambda s: _poison(s, seed=None), ValueError, "seed"),
    "poison_dataset/empty": (lambda s: _poison(s, x=s.x[:0], y=s.y[:0]), ValueError, "x is empty"),
    "poison_dataset/lengths": (lambda s: _poison(s, y=s.y[:10]), ValueError, "y has 10 labels"),
    # metrics
    "accuracy/layout": (lambda s: accuracy(s.clf, np.transpose(s.xt, (0, 2, 3, 1)), s.yt), ValueError,
                        "x .*" + TO_NCHW),
    "accuracy/no-channel-axis": (lambda s: accuracy(s.clf, s.xt[:, 0], s.yt), ValueError,
                                 r"x .*add it with x\[:, np\.newaxis\]"),
    "accuracy/0-255": (lambda s: accuracy(s.clf, s.xt * 255, s.yt), ValueError, "x .*" + SCALE),
    "accuracy/lengths": (lambda s: accuracy(s.clf, s.xt, s.yt[:5]), ValueError, "y has 5 labels"),
    "accuracy/label": (lambda s: accuracy(s.clf, s.xt, np.full(len(s.yt), 10)), ValueError, "y holds label 10"),
    "accuracy/empty": (lambda s: accuracy(s.clf, s.xt[:0], s.yt[:0]), ValueError, "empty"),
    "accuracy/batch_size": (lambda s: accuracy(s.clf, s.xt, s.yt, batch_size=0), ValueError, "batch_size"),
    "attack_success_rate/target": (lambda s: _asr(s, target=15), ValueError, r"target must be a class index"),
    "attack_success_rate/target-bool": (lambda s: _asr(s, target=True), ValueError, "target"),
    "attack_success_rate/nan-trigger": (lambda s: _asr(s, trigger=lambda v: v * np.nan), ValueError,
                                        r"trigger\(x\) contains NaN"),
    "attack_success_rate/not-callable": (lambda s: _asr(s, trigger="square"), ValueError, "trigger"),
    "attack_success_rate/sources": (lambda s: _asr(s, sources=[2.5]), ValueError, "sources"),
    "attack_success_rate/0-255": (lambda s: _asr(s, x=s.xt * 255), ValueError, "x .*" + SCALE),
    "attack_success_rate/batch_size": (lambda s: _asr(s, batch_size=-1), ValueError, "batch_size"),
    "filtering_rates/is_clean": (lambda s: filtering_rates(np.full(10, 0.5), np.zeros(10, bool), s.y[:10], 1),
                                 ValueError, "is_clean must contain only 0"),
    "filtering_rates/is_poison": (lambda s: filtering_rates(np.ones(10), np.full(10, 2), s.y[:10], 1), ValueError,
                                  "is_poison"),
    "filtering_rates/lengths": (lambda s: filtering_rates(np.ones(9), np.zeros(10, bool), s.y[:10], 1), ValueError,
                                "is_clean"),
    "filtering_rates/target": (lambda s: filtering_rates(np.ones(10), np.zeros(10, bool), s.y[:10], -1), ValueError,
                               "target"),
    "filtering_rates/target-onehot": (lambda s: filtering_rates(np.ones(10), np.zeros(10, bool), s.onehot[:10], 15),
                                      ValueError, "target 15"),
    "latent_separability/nb_dims": (lambda s: _separability(nb_dims=0), ValueError, "nb_dims"),
    "latent_separability/nan": (lambda s: _separability(features=np.full((20, 4), np.nan)), ValueError,
                                "features contains NaN"),
    "latent_separability/is_poison": (lambda s: _separability(is_poison=np.arange(20)), ValueError, "is_poison"),
    "latent_separability/seed": (lambda s: _separability(seed=-1), ValueError, "seed"),
    # FinePruning
    "FinePruning/step": (lambda s: _fp(s, step=0), ValueError, "step"),
    "FinePruning/max_acc_drop": (lambda s: _fp(s, max_acc_drop=1.0), ValueError, "max_acc_drop"),
    "FinePruning/seed": (lambda s: _fp(s, seed=-1), ValueError, "seed"),
    "FinePruning/learning_rate": (lambda s: _fp(s, learning_rate="fast"), ValueError, "learning_rate"),
    "FinePruning/lr_factors": (lambda s: _fp(s, lr_factors=[]), ValueError, "lr_factors"),
    "FinePruning/method": (lambda s: _fp(s, method="nope"), ValueError, "method"),
    "FinePruning/min_clean": (lambda s: _fp(s, min_clean=0), ValueError, "min_clean"),
    "FinePruning/unknown": (lambda s: _fp(s).set_params(max_acc_dorp=0.1), ValueError, "Unknown parameter"),
    "FinePruning/0-255": (lambda s: _fp(s)(s.xt * 255, s.yt), ValueError, "x .*" + SCALE),
    "FinePruning/layout": (lambda s: _fp(s)(np.transpose(s.xt, (0, 2, 3, 1)), s.yt), ValueError, "x .*" + TO_NCHW),
    "FinePruning/no-y": (lambda s: _fp(s)(s.xt), ValueError, "labels y"),
    "FinePruning/label": (lambda s: _fp(s)(s.xt, np.full(len(s.yt), 12)), ValueError, "y holds label 12"),
    "FinePruning/empty": (lambda s: _fp(s)(s.xt[:0], s.yt[:0]), ValueError, "empty x"),
    "FinePruning/too-few": (lambda s: _fp(s, min_clean=100)(s.xt[:1], s.yt[:1]), ValueError, "min_clean=100"),
    "FinePruning/x_backdoor-0-255": (lambda s: _fp(s)(s.xt, s.yt, x_backdoor=s.xt * 255, y_backdoor=1), ValueError,
                                     "x_backdoor .*" + SCALE),
    "FinePruning/x_backdoor-layout": (lambda s: _fp(s)(s.xt, s.yt, x_backdoor=np.transpose(s.xt, (0, 2, 3, 1)),
                                                        y_backdoor=1), ValueError, "x_backdoor .*" + TO_NCHW),
    "FinePruning/y_backdoor": (lambda s: _fp(s)(s.xt, s.yt, x_backdoor=s.xt, y_backdoor=15), ValueError,
                               "y_backdoor"),
    "FinePruning/y_backdoor-alone": (lambda s: _fp(s)(s.xt, s.yt, y_backdoor=1), ValueError, "x_backdoor"),
    "FinePruning/fit-0-255": (lambda s: _fp(s).fit(s.xt * 255), ValueError, "x .*" + SCALE),
    "FinePruning/fit-layout": (lambda s: _fp(s).fit(np.transpose(s.xt, (0, 2, 3, 1))), ValueError, "x .*" + TO_NCHW),
}

# the poison-filtering defences: the same bad data and parameters for each
for _name in CHEAP:
    CASES.update({
        f"{_name}/0-255": (lambda s, n=_name: _det(s, n, x=s.x * 255), ValueError, "x_train .*" + SCALE),
        f"{_name}/[-1,1]": (lambda s, n=_name: _det(s, n, x=s.x * 2 - 1), ValueError, r"x_train .*\(x \+ 1\) / 2"),
        f"{_name}/layout": (lambda s, n=_name: _det(s, n, x=s.nhwc), ValueError, "x_train .*" + TO_NCHW),
        f"{_name}/nan": (lambda s, n=_name: _det(s, n, x=s.nan), ValueError, "x_train contains NaN"),
        f"{_name}/label": (lambda s, n=_name: _det(s, n, y=np.where(np.arange(300) == 0, 12, s.y)), ValueError,
                           "y_train holds label 12"),
        f"{_name}/onehot-columns": (lambda s, n=_name: _det(s, n, y=np.eye(5)[s.y % 5]), ValueError,
                                    "y_train is one-hot with 5 columns"),
        f"{_name}/lengths": (lambda s, n=_name: _det(s, n, y=s.y[:10]), ValueError, "y_train has 10 labels"),
        f"{_name}/empty": (lambda s, n=_name: _det(s, n, x=s.x[:0], y=s.y[:0]), ValueError, "x_train is empty"),
        f"{_name}/seed": (lambda s, n=_name: _det(s, n, seed=-1), ValueError, "seed"),
        f"{_name}/seed-float": (lambda s, n=_name: _det(s, n, seed=1.5), ValueError, "seed"),
        f"{_name}/batch_size": (lambda s, n=_name: _det(s, n, batch_size=0), ValueError, "batch_size"),
        f"{_name}/layer": (lambda s, n=_name: _det(s, n, layer=3), ValueError, "layer"),
        f"{_name}/unknown": (lambda s, n=_name: _det(s, n, no_such_param=1), ValueError, "Unknown parameter"),
        f"{_name}/verbose": (lambda s, n=_name: _det(s, n, verbose="yes"), ValueError, "verbose"),
    })


def _load(*args, **kw):
    from art_backdoor_ext.datasets import load_dataset

    return load_dataset(*args, **{"root": "/nonexistent", **kw})


def _make(framework="pytorch", **kw):
    from art_backdoor_ext.models import make_classifier

    return make_classifier(framework, **{"nb_epochs": 1, **kw})


def _robust(s, x, y, **kw):
    from art_backdoor_ext.models import train_robust

    return train_robust(s.clf, x, y, **{"nb_epochs": 1, "max_iter": 1, **kw})  # every case raises before training


def _poison(s, x=None, y=None, trigger=None, **kw):
    args = {"target": 1, "sources": [2], "n_per_source": 3, **kw}
    return poison_dataset(s.x if x is None else x, s.y if y is None else y,
                          localised_trigger(size=2) if trigger is None else trigger, **args)


def _asr(s, x=None, trigger=None, **kw):
    return attack_success_rate(s.clf, s.xt if x is None else x, s.yt,
                               localised_trigger(size=2) if trigger is None else trigger, **{"target": 1, **kw})


def _separability(features=None, is_poison=None, **kw):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, 4)) if features is None else features
    return latent_separability(features, np.arange(20) < 6 if is_poison is None else is_poison, **kw)


def _det(s, name, x=None, y=None, **kw):
    return _defence(name)(s.clf, s.x if x is None else x, s.y if y is None else y, **{**CHEAP[name], **kw})


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_raises_an_error_naming_the_argument(s, case):
    call, error, match = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. FinePruning's Wilson-interval warning before the error
        with pytest.raises(error, match=match) as info:
            call(s)
    # raised by this package's own checks, not deep inside numpy / torch / scikit-learn / scipy
    assert "art_backdoor_ext" in str(info.traceback[-1].path), info.traceback[-1]


# ------------------------------------------------------------------------------------------------ documented answers
def _caught(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call()
    return out, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("n", [1, 2])
def test_aegis_on_one_or_two_images_skips_degenerate_classes(s, n):
    """Used to segfault inside t-SNE (identical features); now every class is skipped with its reason."""
    (report, is_clean), messages = _caught(lambda: _det(s, "AEGISDefence", x=s.x[:n], y=s.y[:n]).detect_poison())
    assert report["detected"] is None and "could not be tested" in report["inconclusive"]
    assert sorted(report["skipped_classes"]) == list(range(10))
    assert all(report["per_class"][c]["nb_clusters"] is None for c in range(10))
    assert is_clean == [1] * n
    assert any("AEGIS is inconclusive" in m for m in messages)


def test_aegis_skips_a_class_whose_features_are_identical():
    """Identical feature vectors crash scikit-learn's Barnes-Hut t-SNE (a segfault): such a class is skipped."""
    from art_backdoor_ext.defences.detector.poison.aegis import AEGISDefence

    same = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (30, 1))
    assert "all identical" in AEGISDefence._degenerate(4, 10, same)  # pylint: disable=protected-access
    assert "1 training image" in AEGISDefence._degenerate(4, 1, same + np.arange(30)[:, None])
    assert AEGISDefence._degenerate(4, 10, same + np.arange(30)[:, None]) is None


def test_aegis_plots_name_why_a_class_was_skipped(s):
    defence = _det(s, "AEGISDefence", x=s.x[s.y != 0], y=s.y[s.y != 0])
    _caught(defence.detect_poison)
    assert 0 in defence.report_["skipped_classes"]
    with pytest.raises(ValueError, match="Class 0 was not tested by AEGIS: class 0 has 0 training image"):
        defence.cluster_data(0)


def test_neural_cleanse_is_inconclusive_when_it_cannot_filter_or_never_converged(s):
    # a one-image training set: the anomalous class has no image of another class to stamp (used to crash in numpy)
    (report, is_clean), messages = _caught(lambda: _det(s, "NeuralCleanseDefence", x=s.x[:1], y=s.y[:1]).detect_poison())
    assert report["detected"] is None and "no image of another class" in report["inconclusive"] and is_clean == [1]
    assert any("Neural Cleanse is inconclusive" in m for m in messages)
    # one optimisation step per target on a clean model: no mask works, yet one is an outlier (it used to be reported
    # as a backdoor in that class)
    (report, is_clean), messages = _caught(lambda: _det(s, "NeuralCleanseDefence", nb_epochs=1, steps_per_epoch=1,
                                                        attack_success_threshold=0.9999).detect_poison())
    assert not any(report["converged"].values())
    assert report["detected"] is None and "no mask reached attack success" in report["inconclusive"]
    assert set(is_clean) == {1} and any("Neural Cleanse is inconclusive" in m for m in messages)


def test_cluster_impurity_records_why_degenerate_classes_are_skipped(s):
    idx = np.concatenate([np.flatnonzero(s.y == 0)[:1], np.flatnonzero(s.y == 1)[:20], np.flatnonzero(s.y == 2)[:20]])
    (report, is_clean), messages = _caught(lambda: _det(s, "ClusterImpurityDefence", x=s.x[idx],
                                                        y=s.y[idx]).detect_poison())
    assert list(report["skipped_classes"]) == [0] and "1 training image" in report["skipped_classes"][0]
    assert report["per_class"][0]["flagged_components"] == [] and is_clean[0] == 1
    assert report["per_class"][5]["skipped"] == "class 5 has no training images"
    assert report["detected"] is not None and report["inconclusive"] is None
    assert any("CI skipped 1 class" in m for m in messages)
    (report, _), messages = _caught(lambda: _det(s, "ClusterImpurityDefence", x=s.x[:1], y=s.y[:1]).detect_poison())
    assert report["detected"] is None and "no class could be tested" in report["inconclusive"]
    assert any("CI is inconclusive" in m for m in messages)


@pytest.mark.parametrize("max_iter", [1, 5])
def test_reverse_engineering_is_inconclusive_when_pairs_do_not_converge(s, max_iter):
    """max_iter=5: every pair unconverged (used to report a detection); max_iter=1: identical statistics (used to end
    in a scipy traceback)."""
    (report, is_clean), messages = _caught(
        lambda: _det(s, "ReverseEngineeringDefence", max_iter=max_iter, batch_size=8).detect_poison())
    assert report["detected"] is None and report["inconclusive"]
    assert len(report["not_converged"]) == 90 and is_clean == [1] * len(s.x)
    assert any("RE is inconclusive" in m and "max_iter" in m for m in messages)


def test_failed_detect_poison_leaves_no_bad_value_set(s):
    defence = _det(s, "ClusterImpurityDefence")
    with pytest.raises(ValueError, match="threshold"):
        defence.detect_poison(threshold=-1)
    assert defence.threshold == 0.5
    report, is_clean = defence.detect_poison()
    assert report["threshold"] == 0.5 and is_clean == _det(s, "ClusterImpurityDefence").detect_poison()[1]


def test_fine_pruning_warns_when_step_prunes_nothing_or_data_are_too_few(s):
    pruner = _fp(s, step=100)
    _, messages = _caught(lambda: pruner(s.xt, s.yt))
    assert pruner.report_["nb_pruned"] == 0
    assert any("pruned no channel" in m and "step=100" in m for m in messages)
    assert any("Wilson interval" in m for m in messages)  # 150 images cannot resolve a 4-point accuracy drop


def test_harness_validates_before_training(s, digits, monkeypatch):
    from art_backdoor_ext.evaluation import Scenario, run_scenario
    from art_backdoor_ext.evaluation import runner

    def no_training(*args, **kwargs):
        raise AssertionError("the model was trained before the arguments were checked")

    monkeypatch.setattr(runner, "prepare_scenario", no_training)
    sc = Scenario(dataset="digits", attack="localised", target=1, sources=[2], n_per_source=5, nb_epochs=1)
    bad = [
        (dict(defences=["nope"]), "Unknown defence 'nope'"),
        (dict(defences="ci"), "defences must be a list"),
        (dict(defences=["ci"], defence_kwargs={"re": {"max_iter": 3}}), r"defence_kwargs has entries for \['re'\]"),
        (dict(defences=["ci"], retrain=["re"]), r"retrain names \['re'\]"),
        (dict(defences=["fine-pruning"], retrain=["fine-pruning"]), "retrain applies to filtering defences"),
        (dict(defences=["ci"], scenario=Scenario(dataset="digits", target=1, sources=[2.5])), "Scenario.sources"),
        (dict(defences=["ci"], scenario=Scenario(dataset="digits", robust_kwargs={"eps": 1.0})),
         "robust_kwargs .* robust=False"),
        (dict(defences=["ci"], scenario=Scenario(dataset="digits", robust=True, robust_kwargs={"nope": 1})),
         r"Unknown keyword\(s\) \['nope'\] in Scenario.robust_kwargs"),
        (dict(defences=["ci"], scenario=Scenario(dataset="digits", seed=-1)), "Scenario.seed"),
    ]
    for kwargs, match in bad:
        scenario = kwargs.pop("scenario", sc)
        with pytest.raises(ValueError, match=match):
            run_scenario(scenario, data=digits, **kwargs)


# ------------------------------------------------------------------------------------------------ side effects
def _global_states():
    import torch

    return np.random.get_state(), torch.get_rng_state(), random.getstate()


def _same_states(a, b):
    import torch

    return (np.array_equal(a[0][1], b[0][1]) and a[0][2] == b[0][2] and torch.equal(a[1], b[1]) and a[2] == b[2])


RNG_CALLS = {
    "AEGISDefence(robustness_check)": lambda s: _det(s, "AEGISDefence", x=s.x[:100], y=s.y[:100],
                                                     robustness_check=True).detect_poison(),
    "ClusterImpurityDefence": lambda s: _det(s, "ClusterImpurityDefence").detect_poison(),
    "ReverseEngineeringDefence": lambda s: _det(s, "ReverseEngineeringDefence").detect_poison(),
    "NeuralCleanseDefence": lambda s: _det(s, "NeuralCleanseDefence").detect_poison(),
    "FinePruning(auto rate)": lambda s: _fp(s, nb_epochs=1, lr_factors=(2, 1))(s.xt, s.yt),
    "FinePruning.paper": lambda s: _paper(s)(s.xt, s.yt),
    "make_classifier": lambda s: _make(x_train=s.x[:60], y_train=s.y[:60], nb_epochs=1),
    "train_robust": lambda s: _robust_copy(s),
    "poison_dataset": lambda s: _poison(s, n_per_source=5),
    "PoisoningAttackInvisibleBackdoor": lambda s: _invisible(pattern="E").poison(s.x[:5], _targets(5)),
    "PoisoningAttackAdversarialTrigger": lambda s: _adversarial(s).generate_pattern(s.xt[s.yt == 2]),
    "make_pattern": lambda s: make_pattern("E", (1, 8, 8), seed=3),
    "isolated_pixels_pattern": lambda s: isolated_pixels_pattern((1, 8, 8), nb_pixels=2, seed=3),
    "metrics": lambda s: (accuracy(s.clf, s.xt, s.yt), _asr(s)),
}


def _paper(s):
    from art_backdoor_ext.defences.transformer.poisoning import FinePruning

    return FinePruning.paper(s.clf, nb_epochs=1, min_clean=10)


def _robust_copy(s):
    from art_backdoor_ext.estimators import get_adapter
    from art_backdoor_ext.models import train_robust

    return train_robust(get_adapter(s.clf).clone(), s.x[:32], s.y[:32], nb_epochs=1, max_iter=1, batch_size=32)


@pytest.mark.parametrize("name", sorted(RNG_CALLS))
def test_global_generators_are_untouched(s, name):
    """numpy's, torch's and Python's global generators: after the call, the caller's next draw is what it would have
    been (the issue: AEGIS and FinePruning reseeded numpy's global generator)."""
    import torch

    np.random.seed(1234)
    torch.manual_seed(1234)
    random.seed(1234)
    before = _global_states()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        RNG_CALLS[name](s)
    assert _same_states(before, _global_states()), f"{name} changed a global random generator"


def test_inputs_changed_afterwards_change_nothing(s):
    from art_backdoor_ext.attacks.poisoning import PatternTrigger

    x = s.x[:5].copy()
    pattern = make_pattern("C", (1, 8, 8), seed=1)
    trigger, attack = PatternTrigger(pattern.copy()), _invisible(pattern=pattern)
    expected = add_pattern(x, pattern)
    pattern[:] = 0.5  # the caller reuses its array
    np.testing.assert_array_equal(trigger(x), expected)
    np.testing.assert_array_equal(attack.poison(x, _targets(5))[0], expected)
    # poison_dataset returns arrays of its own
    xs, ys = s.x.copy(), s.y.copy()
    data = _poison(s, x=xs, y=ys)
    snapshot = data.x.copy(), data.y.copy()
    xs[:], ys[:] = 0.0, 0
    np.testing.assert_array_equal(data.x, snapshot[0])
    np.testing.assert_array_equal(data.y, snapshot[1])


@pytest.mark.parametrize("name", sorted(CHEAP))
def test_defences_keep_their_own_copy_of_the_data(s, name):
    """The caller overwrites its arrays after construction (the issue: CI kept a reference and changed its answer)."""
    xs, ys = s.x.copy(), s.y.copy()
    defence = _det(s, name, x=xs, y=ys)
    xs[:], ys[:] = 0.5, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (report, is_clean), (expected, expected_clean) = defence.detect_poison(), _det(s, name).detect_poison()
    assert is_clean == expected_clean
    assert report["detected"] == expected["detected"] and report["target_class"] == expected["target_class"]


@pytest.mark.parametrize("learning_rate", ["scaled", "auto", None])
def test_fine_pruning_is_deterministic_under_seed_on_pytorch(s, learning_rate):
    from art_backdoor_ext.estimators import get_adapter

    def run(seed):
        pruner = _fp(s, nb_epochs=1, learning_rate=learning_rate, lr_factors=(2, 1), seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = pruner(s.xt, s.yt)
        return np.concatenate([w.ravel() for w in get_adapter(model).get_weights()])

    first = run(3)
    np.testing.assert_array_equal(first, run(3))
    assert not np.array_equal(first, run(4))  # the seed does drive the fine-tuning order


# ------------------------------------------------------------------------------------------------ Keras
def test_keras_entries_name_the_transpose_and_keep_the_generators(s):
    """The Keras side of the layout check (channels-first data on a Keras model), and numpy's and Python's generators
    after a Keras defence. (TensorFlow's global seed cannot be read back; the adapter documents that it stays set.)"""
    from art_backdoor_ext.defences.transformer.poisoning import FinePruning
    from art_backdoor_ext.models import make_classifier

    to_nhwc = r"np\.transpose\(x, \(0, 2, 3, 1\)\)"
    clf = make_classifier("keras", input_shape=(8, 8, 1), nb_classes=10, nb_epochs=0, seed=0)
    for name in CHEAP:
        with pytest.raises(ValueError, match="x_train .*" + to_nhwc):
            _defence(name)(clf, s.x, s.y, **CHEAP[name])
    with pytest.raises(ValueError, match="x .*" + to_nhwc):
        accuracy(clf, s.xt, s.yt)
    with pytest.raises(ValueError, match="x .*" + to_nhwc):
        attack_success_rate(clf, s.xt, s.yt, localised_trigger(size=2), target=1)
    with pytest.raises(ValueError, match=r"x .*add it with x\[\.\.\., np\.newaxis\]"):
        accuracy(clf, s.nhwc[..., 0], s.y)
    with pytest.raises(ValueError, match="x .*" + to_nhwc):
        FinePruning(clf, nb_epochs=0, min_clean=10)(s.xt, s.yt)
    with pytest.raises(ValueError, match="x_train .*" + to_nhwc):
        make_classifier("keras", x_train=s.x[:20], y_train=s.y[:20], nb_epochs=1)
    with pytest.raises(ValueError, match="x_train .*" + SCALE):
        _defence("ClusterImpurityDefence")(clf, s.nhwc * 255, s.y)

    np.random.seed(1234)
    random.seed(1234)
    before = np.random.get_state(), random.getstate()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = [(_defence("ClusterImpurityDefence")(clf, s.nhwc, s.y, max_components=2).detect_poison(),
                 _defence("ReverseEngineeringDefence")(clf, s.nhwc, s.y, max_iter=3, batch_size=4).detect_poison())
                for _ in range(2)]
        FinePruning(clf, nb_epochs=1, min_clean=10, learning_rate=None)(s.nhwc[:60], s.y[:60])
    after = np.random.get_state(), random.getstate()
    assert np.array_equal(before[0][1], after[0][1]) and before[0][2] == after[0][2] and before[1] == after[1]
    # deterministic on Keras too
    (ci_a, re_a), (ci_b, re_b) = runs
    assert ci_a[1] == ci_b[1] and ci_a[0]["nb_components"] == ci_b[0]["nb_components"]
    np.testing.assert_array_equal(re_a[0]["norms"], re_b[0]["norms"])


# ------------------------------------------------------------------------------------------------ properties
_GRID = st.integers(0, 255).map(lambda v: v / 255.0)


@st.composite
def _images(draw):
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(6, 9)), draw(st.integers(6, 9))
    values = draw(st.lists(_GRID, min_size=n * h * w, max_size=n * h * w))
    return np.asarray(values, np.float32).reshape(n, 1, h, w)


@settings(max_examples=30, deadline=None)
@given(x=_images(), size=st.integers(1, 2), value=_GRID, distributed=st.booleans())
def test_visible_triggers_properties(x, size, value, distributed):
    """Shape, dtype, range, the 8-bit grid, no NaN, no mutation, and the squares exactly where the paper puts them."""
    x_before = x.copy()
    trigger = (distributed_trigger if distributed else localised_trigger)(size=size, value=value)
    out = trigger(x)
    np.testing.assert_array_equal(x, x_before)
    assert out.shape == x.shape and out.dtype == np.float32 and np.all(np.isfinite(out))
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(out * 255, np.round(out * 255), atol=1e-4)
    expected = x.copy()
    h, w = x.shape[2:]
    expected[:, :, h - 1 - size:h - 1, w - 1 - size:w - 1] = value  # bottom-right, one pixel from the border
    if distributed:
        expected[:, :, 1:1 + size, 1:1 + size] = value  # and top-left
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(trigger(x), out)  # a function of x alone


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 16), nb_pixels=st.integers(1, 3))
def test_isolated_pixels_pattern_properties(seed, nb_pixels):
    pattern = isolated_pixels_pattern((1, 10, 10), nb_pixels=nb_pixels, seed=seed)
    assert pattern.shape == (1, 10, 10) and pattern.dtype == np.float32
    assert int((pattern > 0).sum()) == nb_pixels and np.all(np.isin(pattern, (0.0, np.float32(0.35))))
    np.testing.assert_array_equal(pattern, isolated_pixels_pattern((1, 10, 10), nb_pixels=nb_pixels, seed=seed))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 40), target=st.integers(0, 9), offset=st.integers(0, 100))
def test_accuracy_and_asr_equal_a_hand_count(s, n, target, offset):
    from art_backdoor_ext.estimators import get_adapter

    x, y = s.xt[offset:offset + n], s.yt[offset:offset + n]
    pred = get_adapter(s.clf).predict_labels(x)
    assert accuracy(s.clf, x, y) == pytest.approx(float(np.mean(pred == y)))
    sources = y != target
    trigger = localised_trigger(size=2)
    if not sources.any():
        with pytest.raises(ValueError, match="No test images of the source classes"):
            attack_success_rate(s.clf, x, y, trigger, target=target)
        return
    hand = float(np.mean(get_adapter(s.clf).predict_labels(trigger(x[sources])) == target))
    asr = attack_success_rate(s.clf, x, y, trigger, target=target)
    assert 0.0 <= asr <= 1.0 and asr == pytest.approx(hand)


@pytest.mark.parametrize("framework", ["pytorch", "keras"])
def test_aegis_and_neural_cleanse_are_deterministic(s, framework):
    """Every detection defence gives the same answer twice on PyTorch and Keras models (CI and RE: above and in their
    modules; FinePruning: its own module); AEGIS's PGD/t-SNE/mean-shift and Neural Cleanse's mask optimisation are
    seeded too."""
    from art_backdoor_ext.models import make_classifier

    x = s.x if framework == "pytorch" else s.nhwc
    clf = s.clf if framework == "pytorch" else make_classifier("keras", x_train=x, y_train=s.y, nb_epochs=3,
                                                               batch_size=32, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aegis = [_defence("AEGISDefence")(clf, x[:120], s.y[:120], **CHEAP["AEGISDefence"]).detect_poison()
                 for _ in range(2)]
        nc = [_defence("NeuralCleanseDefence")(clf, x, s.y, **CHEAP["NeuralCleanseDefence"]).detect_poison()
              for _ in range(2)]
    (rep_a, clean_a), (rep_b, clean_b) = aegis
    assert clean_a == clean_b and rep_a["detected"] == rep_b["detected"]
    assert {c: r["nb_clusters"] for c, r in rep_a["per_class"].items()} == \
        {c: r["nb_clusters"] for c, r in rep_b["per_class"].items()}
    (nc_a, nc_clean_a), (nc_b, nc_clean_b) = nc
    assert list(nc_clean_a) == list(nc_clean_b) and nc_a["l1_norms"] == nc_b["l1_norms"]
