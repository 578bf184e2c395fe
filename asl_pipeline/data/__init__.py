"""Bundled data files (found with importlib.resources)."""
