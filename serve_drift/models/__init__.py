"""Embedded demo models, trained locally on bundled data (no downloads at run time)."""
