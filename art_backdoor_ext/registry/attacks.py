"""
Every attack of the harness, by name (each factory returns a trigger function ``f(x) -> x`` or an ART attack):

* visible triggers: ``"badnets"`` (a localised square through ART's ``PoisoningAttackBackdoor``), ``"localised"``,
  ``"distributed"`` (the AEGIS paper's two visible triggers);
* ``"static"``: Zhong et al.'s invisible static trigger (+3/255 where row and column are both even; = pattern B);
* ``"pattern-A"`` ... ``"pattern-F"`` (and ``"chessboard"``): the RE paper's imperceptible patterns (CIFAR-10 settings);
* ``"chessboard-patch"``: the RE paper's MNIST attack, a 6x6 chessboard patch of 25/255 at the bottom-right corner;
* ``"adversarial"``: Zhong et al.'s adversarial trigger, built on a clean surrogate of the scenario's framework;
* ``"isolated-pixels"``: pattern E with brightening pixels only (a blur-fragile trigger for cluster impurity);
* ``"adversarial-embedding"``: Tan & Shokri's adaptive attacker, which trains the model itself (``trains_model=True``):
  the BadNets square (or another trigger), embedded so that a latent discriminator cannot tell poisoned from clean;
* ``"targeted-embedding"``: Tan & Shokri's targeted embedding against pruning, which also trains the model itself.

The pattern factories return a :class:`~art_backdoor_ext.attacks.poisoning.perturbations.PatternTrigger`, whose
``.pattern`` attribute is the additive pattern (for comparing with a defence's recovered pattern).
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np

from art_backdoor_ext.attacks.poisoning.perturbations import (
    PatternTrigger,
    canonical_pattern_kind,
    distributed_trigger,
    isolated_pixels_pattern,
    localised_trigger,
    make_pattern,
)
from art_backdoor_ext.evaluation.api import ATTACKS, AttackContext, get_attack, register_attack

logger = logging.getLogger(__name__)


@register_attack("badnets")
def _badnets(ctx: AttackContext, size: int = 3, value: float = 1.0):
    """BadNets-style localised square through ART's ``PoisoningAttackBackdoor``."""
    from art.attacks.poisoning import PoisoningAttackBackdoor

    return PoisoningAttackBackdoor(localised_trigger(size=size, value=value))


@register_attack("localised")
def _localised(ctx: AttackContext, size: int = 3, value: float = 1.0):
    """The AEGIS paper's localised trigger: one square at the bottom-right corner."""
    return localised_trigger(size=size, value=value)


@register_attack("distributed")
def _distributed(ctx: AttackContext, size: int = 2, value: float = 1.0):
    """The AEGIS paper's distributed trigger: two smaller squares at the top-left and bottom-right corners."""
    return distributed_trigger(size=size, value=value)


@register_attack("isolated-pixels")
def _isolated_pixels(ctx: AttackContext, nb_pixels: int = 4, value: float = 0.35, seed: Optional[int] = None,
                     border_band: bool = False):
    """Pattern E with brightening pixels only (:func:`isolated_pixels_pattern`); clipped to [0, 1]."""
    pattern = isolated_pixels_pattern(ctx.image_shape, nb_pixels, value, ctx.seed if seed is None else seed,
                                      channels_first=ctx.channels_first, border_band=border_band)

    def trigger(x: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(x, np.float32) + pattern, 0.0, 1.0)

    trigger.pattern = pattern
    trigger.__name__ = "isolated_pixels_trigger"
    return trigger


@register_attack("static")
def _static(ctx: AttackContext, magnitude: float = 3.0):
    """Zhong et al.'s invisible static trigger; ``magnitude`` in 1/255 units (3 in the paper)."""
    pattern = make_pattern("static", ctx.image_shape, channels_first=ctx.channels_first)
    return PatternTrigger(pattern * (float(magnitude) / 3.0), kind="static")


def _pattern_factory(kind: str, **defaults):
    def factory(ctx: AttackContext, seed: int = None, size: int = 3, **kwargs):
        seed = ctx.seed if seed is None else seed
        pattern = make_pattern(kind, ctx.image_shape, seed=seed, channels_first=ctx.channels_first, size=size,
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


class _EmbeddingTrainer:
    """
    The harness's side of ``"adversarial-embedding"`` and ``"targeted-embedding"``: a trigger to poison with, and the
    training step (the attack class, continuing from the scenario's naive model with ``pretrain_epochs=0``).
    """

    def __init__(self, attack_class, trigger, ctx: AttackContext, params: dict) -> None:
        self.attack_class = attack_class
        self.trigger = trigger
        self.ctx = ctx
        self.params = params
        self.info: dict = {}

    def train(self, classifier, x: np.ndarray, y: np.ndarray, is_poison: np.ndarray):
        """Embed the backdoor, starting from the scenario's naive model."""
        attack = self.attack_class(classifier, self.trigger, self.ctx.target, sources=self.ctx.sources,
                                   pretrain_epochs=0, seed=self.ctx.seed, verbose=self.ctx.verbose, **self.params)
        model = attack.embed(x, y, is_poison, x_val=self.ctx.x_test, y_val=self.ctx.y_test)
        self.info = {"embedding_seconds": attack.seconds_["embedding"], "history": attack.history_}
        if "val_d_acc" in attack.history_:
            self.info["final_val_d_acc"] = attack.history_["val_d_acc"][-1]
        if getattr(attack, "pruned_channels_", None):
            self.info.update(pruned_channels=attack.pruned_channels_, pruned_layer=attack.layer_,
                             pruning_seconds=attack.seconds_["pruning"])
        return model


def _embedding_trigger(ctx: AttackContext, trigger: str, trigger_kwargs: Optional[dict], size: int, value: float):
    """The trigger an embedding attack poisons with: the BadNets square, or any other registered attack's trigger."""
    from art.attacks.poisoning import PoisoningAttackBackdoor

    if trigger == "badnets":
        return PoisoningAttackBackdoor(localised_trigger(size=size, value=value))
    if trigger in ("adversarial-embedding", "targeted-embedding") or trigger not in ATTACKS:
        names = sorted(n for n in ATTACKS if n not in ("adversarial-embedding", "targeted-embedding"))
        raise ValueError(f"trigger must name a trigger attack of the harness ({', '.join(names)}); got {trigger!r}.")
    return get_attack(trigger)(ctx, **(trigger_kwargs or {}))


@register_attack("adversarial-embedding", trains_model=True)
def _adversarial_embedding(ctx: AttackContext, size: int = 3, value: float = 1.0, regularization: float = 0.3,
                           nb_epochs: int = 5, learning_rate: float = 1e-4, learning_rate_d: float = 1e-3,
                           d_steps: int = 1, batch_size: int = 64, layer: Optional[str] = None,
                           reference: str = "target", objective: str = "confusion", trigger: str = "badnets",
                           trigger_kwargs: Optional[dict] = None):
    """
    Tan & Shokri's adversarial backdoor embedding (https://arxiv.org/abs/1905.13409), by default with the BadNets
    square of ``"badnets"`` (``trigger=`` names another attack of the harness, e.g. ``"chessboard-patch"``, with its
    ``trigger_kwargs``): the scenario's naive model is trained on the poisoned set as usual, then the attack continues
    its training in the min-max game against a latent discriminator (:class:`~art_backdoor_ext.attacks.poisoning.
    adversarial_embedding.AdversarialBackdoorEmbedding`); defences see the embedded model.
    """
    from art_backdoor_ext.attacks.poisoning.adversarial_embedding import AdversarialBackdoorEmbedding

    params = dict(regularization=regularization, nb_epochs=nb_epochs, learning_rate=learning_rate,
                  learning_rate_d=learning_rate_d, d_steps=d_steps, batch_size=batch_size, layer=layer,
                  reference=reference, objective=objective)
    trig = _embedding_trigger(ctx, trigger, trigger_kwargs, size, value)
    return _EmbeddingTrainer(AdversarialBackdoorEmbedding, trig, ctx, params)


@register_attack("targeted-embedding", trains_model=True)
def _targeted_embedding(ctx: AttackContext, size: int = 3, value: float = 1.0, regularization: float = 10.0,
                        scale: float = 1e-5, prune_acc_drop: float = 0.08, nb_epochs: int = 5,
                        learning_rate: float = 1e-3, batch_size: int = 64, layer: Optional[str] = None,
                        trigger: str = "badnets", trigger_kwargs: Optional[dict] = None):
    """
    Tan & Shokri's targeted embedding against pruning (Eq. 4; :class:`~art_backdoor_ext.attacks.poisoning.
    targeted_embedding.TargetedBackdoorEmbedding`): the scenario's naive model is trained as usual, the channels the
    pruning defence would remove from it are found, and the model is retrained so that they stay silent and the
    backdoor survives their removal. Trigger as for ``"adversarial-embedding"``.
    """
    from art_backdoor_ext.attacks.poisoning.targeted_embedding import TargetedBackdoorEmbedding

    params = dict(regularization=regularization, scale=scale, prune_acc_drop=prune_acc_drop, nb_epochs=nb_epochs,
                  learning_rate=learning_rate, batch_size=batch_size, layer=layer)
    return _EmbeddingTrainer(TargetedBackdoorEmbedding, _embedding_trigger(ctx, trigger, trigger_kwargs, size, value),
                             ctx, params)
