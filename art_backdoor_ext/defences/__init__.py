"""Defences against backdoor (data-poisoning) attacks, in ART's layout."""
