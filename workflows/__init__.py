"""Nipype workflows (``init_*_wf``) composing :mod:`asl_pipeline.interfaces`."""
