"""Backdoor poisoners: trigger functions, ART poisoning attacks and poisoned-dataset builders."""
from art_backdoor_ext.attacks.poisoning.dataset import PoisonedDataset, poison_dataset
from art_backdoor_ext.attacks.poisoning.perturbations import (
    PATTERN_KINDS,
    PatternTrigger,
    add_distributed_trigger,
    add_localised_trigger,
    add_pattern,
    distributed_trigger,
    isolated_pixels_pattern,
    localised_trigger,
    make_pattern,
    pattern_trigger,
)

__all__ = [
    "PoisonedDataset",
    "poison_dataset",
    "add_localised_trigger",
    "add_distributed_trigger",
    "localised_trigger",
    "distributed_trigger",
    "isolated_pixels_pattern",
    "PATTERN_KINDS",
    "PatternTrigger",
    "make_pattern",
    "add_pattern",
    "pattern_trigger",
    "PoisoningAttackInvisibleBackdoor",
    "PoisoningAttackAdversarialTrigger",
    "AdversarialBackdoorEmbedding",
    "TargetedBackdoorEmbedding",
]


def __getattr__(name):  # lazy: the attack classes import ART's poisoning module
    if name == "PoisoningAttackInvisibleBackdoor":
        from art_backdoor_ext.attacks.poisoning.invisible_backdoor import PoisoningAttackInvisibleBackdoor

        return PoisoningAttackInvisibleBackdoor
    if name == "PoisoningAttackAdversarialTrigger":
        from art_backdoor_ext.attacks.poisoning.adversarial_trigger import PoisoningAttackAdversarialTrigger

        return PoisoningAttackAdversarialTrigger
    if name == "AdversarialBackdoorEmbedding":
        from art_backdoor_ext.attacks.poisoning.adversarial_embedding import AdversarialBackdoorEmbedding

        return AdversarialBackdoorEmbedding
    if name == "TargetedBackdoorEmbedding":
        from art_backdoor_ext.attacks.poisoning.targeted_embedding import TargetedBackdoorEmbedding

        return TargetedBackdoorEmbedding
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
