"""Transformers: defences that return a repaired classifier."""
