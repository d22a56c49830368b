"""Attacks: backdoor poisoners for ART."""
