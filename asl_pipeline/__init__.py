"""asl_pipeline: arterial spin labeling perfusion MRI, from BIDS to CBF.

The numerical core lives in plain modules of this package (``cbf``, ``motion``,
``outliers``, ``models``, ``metrics``, ``simulate``, ``bids``); the Nipype
layer lives in :mod:`asl_pipeline.interfaces` and :mod:`asl_pipeline.workflows`.
"""

__version__ = "0.1.0"
