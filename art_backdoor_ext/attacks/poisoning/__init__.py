"""Backdoor poisoners: trigger functions, ART poisoning attacks and poisoned-dataset builders."""
from art_backdoor_ext.attacks.poisoning.dataset import PoisonedDataset, poison_dataset
from art_backdoor_ext.attacks.poisoning.perturbations import (
    add_distributed_trigger,
    add_localised_trigger,
    distributed_trigger,
    localised_trigger,
)

__all__ = [
    "PoisonedDataset",
    "poison_dataset",
    "add_localised_trigger",
    "add_distributed_trigger",
    "localised_trigger",
    "distributed_trigger",
]
