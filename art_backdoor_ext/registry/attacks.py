"""
Harness attacks for the invisible triggers (issue 3).

* ``"static"``: Zhong et al.'s invisible static trigger (+3/255 where row and column are both even; = pattern B);
* ``"pattern-A"`` ... ``"pattern-F"`` (and ``"chessboard"``): the RE paper's imperceptible patterns (CIFAR-10 settings);
* ``"chessboard-patch"``: the RE paper's MNIST attack, a 6x6 chessboard patch of 25/255 at the bottom-right corner;
* ``"adversarial"``: Zhong et al.'s adversarial trigger, built on a clean surrogate of the scenario's framework.

Every factory returns a :class:`~art_backdoor_ext.attacks.poisoning.perturbations.PatternTrigger`, a trigger function
``f(x) -> x`` whose ``.pattern`` attribute is the additive pattern (for comparing with a defence's recovered pattern).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from art_backdoor_ext.attacks.poisoning.perturbations import PatternTrigger, canonical_pattern_kind, make_pattern
from art_backdoor_ext.evaluation import AttackContext, register_attack

logger = logging.getLogger(__name__)


def _image_shape(ctx: AttackContext):
    return tuple(ctx.x_train.shape[1:])


def _channels_first(ctx: AttackContext) -> bool:
    return ctx.framework == "pytorch"


@register_attack("static")
def _static(ctx: AttackContext, magnitude: float = 3.0):
    """Zhong et al.'s invisible static trigger; ``magnitude`` in 1/255 units (3 in the paper)."""
    pattern = make_pattern("static", _image_shape(ctx), channels_first=_channels_first(ctx))
    return PatternTrigger(pattern * (float(magnitude) / 3.0), kind="static")


def _pattern_factory(kind: str, **defaults):
    def factory(ctx: AttackContext, seed: int = None, size: int = 3, **kwargs):
        seed = ctx.seed if seed is None else seed
        pattern = make_pattern(kind, _image_shape(ctx), seed=seed, channels_first=_channels_first(ctx), size=size,
                               **{**defaults, **kwargs})
        return PatternTrigger(pattern, kind=canonical_pattern_kind(kind))

    factory.__doc__ = f"The RE paper's pattern {kind} (random choices drawn from the scenario's seed)."
    return factory


for _letter in "ABCDEF":
    register_attack(f"pattern-{_letter}")(_pattern_factory(_letter))
register_attack("chessboard")(_pattern_factory("chessboard"))
# the RE paper's MNIST attack (supplementary Section 19, Fig. 14): a 6x6 chessboard patch of 25/255 at the bottom-right
# corner; the image-wide 2/255 chessboard (pattern A) is the paper's CIFAR-10 attack
register_attack("chessboard-patch")(_pattern_factory("chessboard", magnitude=25 / 255, patch=6))


@register_attack("adversarial")
def _adversarial(ctx: AttackContext, norm_bound: float = 0.5, surrogate_epochs: int = 5, width: str = "compact",
                 max_source: int = 500, max_passes: int = 3, max_iter: int = 50, batch_size: int = 32):
    """
    Zhong et al.'s adversarial trigger: train a clean surrogate (the reference CNN of the scenario's framework) on the
    clean training set, then build the universal pattern from up to ``max_source`` source-class training images.
    """
    from art_backdoor_ext.attacks.poisoning.adversarial_trigger import PoisoningAttackAdversarialTrigger
    from art_backdoor_ext.models import make_classifier

    start = time.perf_counter()
    surrogate = make_classifier(ctx.framework, nb_classes=ctx.nb_classes, width=width, x_train=ctx.x_train,
                                y_train=ctx.y_train, nb_epochs=surrogate_epochs, seed=ctx.seed + 1,
                                verbose=ctx.verbose)
    labels = np.asarray(ctx.y_train)
    idx = np.flatnonzero(np.isin(labels, ctx.sources))
    rng = np.random.default_rng(ctx.seed)
    if len(idx) > max_source:
        idx = np.sort(rng.choice(idx, max_source, replace=False))
    attack = PoisoningAttackAdversarialTrigger(surrogate, target=ctx.target, norm_bound=norm_bound,
                                               max_passes=max_passes, max_iter=max_iter, batch_size=batch_size,
                                               verbose=ctx.verbose)
    attack.generate_pattern(ctx.x_train[idx])
    logger.info("Adversarial trigger built in %.1fs: |v|_2 = %.3f, surrogate fooling rates %s.",
                time.perf_counter() - start, float(np.linalg.norm(attack.pattern)), attack.fooling_rates)
    trigger = attack.trigger()
    trigger.fooling_rates = list(attack.fooling_rates)
    return trigger
