"""
Harness rows of Neural Cleanse (Wang et al., https://people.cs.uchicago.edu/~ravenben/publications/pdf/backdoor-sp19.pdf):

* ``"nc"``: ours for both frameworks (:class:`~art_backdoor_ext.defences.detector.poison.NeuralCleanseDefence`);
* ``"nc-art"``: ART's own ``NeuralCleanse`` transformer, Keras classifiers only, with the same settings as ``"nc"``
  where ART has them (see :func:`_art_neural_cleanse` for the mapping and for the one workaround it needs).
"""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Any, Dict, Tuple

import numpy as np

from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.evaluation.api import ScenarioContext, register_defence
from art_backdoor_ext.metrics import mad_anomaly_index
from art_backdoor_ext.utils import check_int, check_number

logger = logging.getLogger(__name__)


@register_defence("nc")
def _neural_cleanse(ctx: ScenarioContext, **kwargs: Any):
    """Neural Cleanse with its defaults (any parameter by keyword); notes give the flagged label's anomaly index."""
    from art_backdoor_ext.defences.detector.poison import NeuralCleanseDefence

    kwargs.setdefault("verbose", ctx.verbose)
    kwargs.setdefault("seed", ctx.scenario.seed)
    report, is_clean = NeuralCleanseDefence(ctx.classifier, ctx.x_train, ctx.y_train, **kwargs).detect_poison()
    index = report["anomaly_index"]
    low = min(index, key=index.get)
    notes = f"lowest anomaly index {index[low]:.2f} (class {low})"
    return dict(report, notes=notes), np.asarray(is_clean, int)


def art_neural_cleanse(twin, x_val: np.ndarray, y_val: np.ndarray, nb_epochs: int, batch_size: int,
                       init_cost: float = 1e-3, learning_rate: float = 0.1, norm: int = 1,
                       restore_learning_rate: bool = True) -> Tuple[list, Dict[int, np.ndarray], Dict[int, float], Any]:
    """
    Run ART's ``NeuralCleanse`` transformer on ``twin`` (an ART ``KerasClassifier`` with probability outputs, see the
    adapters' ``art_neural_cleanse_classifier``) over ``x_val`` / one-hot ``y_val``, with ART's defaults but the given
    settings, and keep what ART does not return: each label's mask and the seconds its reverse engineering took.
    ``restore_learning_rate``: set the optimiser's rate back after ART's ``reset()`` (see :func:`_art_neural_cleanse`).

    :return: ``(flagged, masks, seconds, nc)``: ART's ``outlier_detection`` list of ``(label, norm, anomaly)``, the mask
             and the seconds per label, and ART's ``KerasNeuralCleanse`` object.
    """
    import time

    from art.defences.transformer.poisoning import NeuralCleanse

    nc = NeuralCleanse(twin)(twin, steps=nb_epochs, init_cost=init_cost, norm=norm, learning_rate=learning_rate,
                              attack_success_threshold=0.99, patience=5, early_stop=True, early_stop_threshold=0.99,
                              early_stop_patience=10, cost_multiplier=1.5, batch_size=batch_size)
    masks: Dict[int, np.ndarray] = {}
    seconds: Dict[int, float] = {}
    generate = nc.generate_backdoor

    def keep_mask(x, y, y_target):  # ART keeps no norms: record each label's mask as ART computes it
        start = time.perf_counter()
        mask, pattern = generate(x, y, y_target)
        label = int(np.argmax(y_target))
        masks[label], seconds[label] = np.asarray(mask), time.perf_counter() - start
        return mask, pattern

    nc.generate_backdoor = keep_mask
    if restore_learning_rate:
        reset = nc.reset

        def reset_keeping_rate():
            reset()
            nc.opt.learning_rate.assign(nc.learning_rate)

        nc.reset = reset_keeping_rate
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # ART prints every step
        flagged = nc.outlier_detection(x_val, y_val)
    return flagged, masks, seconds, nc


@register_defence("nc-art")
def _art_neural_cleanse(ctx: ScenarioContext, nb_epochs: int = 40, steps_per_epoch: int = 5, batch_size: int = 32,
                        init_cost: float = 1e-3, learning_rate: float = 0.1, norm: int = 1,
                        restore_learning_rate: bool = True) -> Tuple[Dict[str, Any], np.ndarray]:
    """
    ART's ``NeuralCleanse`` (``art.defences.transformer.poisoning``) on a Keras scenario, as a careful ART user runs it:
    ``steps=nb_epochs`` passes over ``steps_per_epoch * batch_size`` training images drawn with the scenario's seed
    (the same number of Adam steps per label as ``"nc"``: 200), ART's defaults otherwise (cost multiplier 1.5,
    patience 5, attack success 0.99, early stop), its MAD outlier test (anomaly index > 2 on the small side).
    ART's Neural Cleanse judges the model, not the training set: ``is_clean`` is all ones (nothing filtered), the
    report gives the flagged labels, each label's mask L1 norm and signed anomaly index, and the target (the flagged
    label with the smallest mask).

    Workaround (``restore_learning_rate=True``): under Keras 3, ART 1.20's ``reset()``, called before every label,
    assigns zero to every optimiser variable, the learning rate included, so as installed no mask ever moves and
    nothing is flagged (``benchmarks/results/neural_cleanse_speed.md``); the row sets the rate back after each reset.
    ``False`` runs ART exactly as installed. Raises ``ValueError`` on a non-Keras classifier.
    """
    nb_epochs = check_int("nb_epochs", nb_epochs, low=1)
    steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, low=1)
    batch_size = check_int("batch_size", batch_size, low=1)
    init_cost = check_number("init_cost", init_cost, low=0.0)
    learning_rate = check_number("learning_rate", learning_rate, low=0.0, low_open=True)
    norm = check_int("norm", norm, low=1, high=2)
    adapter = get_adapter(ctx.classifier)
    twin = adapter.art_neural_cleanse_classifier()  # ValueError for other frameworks
    rng = np.random.default_rng(ctx.scenario.seed)
    n = min(len(ctx.x_train), steps_per_epoch * batch_size)
    idx = rng.choice(len(ctx.x_train), size=n, replace=False)
    x_val = np.asarray(ctx.x_train[idx], np.float32)
    y_val = np.eye(ctx.nb_classes, dtype=np.float32)[ctx.y_train[idx]]
    with adapter.seeded(ctx.scenario.seed):
        flagged, masks, _, _ = art_neural_cleanse(twin, x_val, y_val, nb_epochs=nb_epochs, batch_size=batch_size,
                                                  init_cost=init_cost, learning_rate=learning_rate, norm=norm,
                                                  restore_learning_rate=restore_learning_rate)
    norms = np.array([float(np.sum(np.abs(masks[c]))) for c in range(ctx.nb_classes)])
    index = mad_anomaly_index(norms)
    suspected = sorted(int(c) for c, _, _ in flagged)
    target = int(min(suspected, key=lambda c: norms[c])) if suspected else None
    if np.isnan(index).all():
        notes = "all masks equal: nothing optimised (ART as installed under Keras 3?)"
    else:
        notes = f"lowest anomaly index {np.nanmin(index):.2f} (class {int(np.nanargmin(index))})"
    if restore_learning_rate:
        notes += "; learning rate restored after ART's reset()"
    report = {"detected": bool(suspected), "target_class": target, "suspected_classes": suspected,
              "l1_norms": {c: float(v) for c, v in enumerate(norms)},
              "anomaly_index": {c: float(v) for c, v in enumerate(index)}, "notes": notes}
    return report, np.ones(len(ctx.x_train), int)
