"""Nipype interfaces over the numerical core of :mod:`asl_pipeline`."""
