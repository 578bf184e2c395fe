"""Execution engines other than Nipype."""
