"""The methods boilerplate states the quantification parameters the run used."""

from asl_pipeline.rundesc import describe_metadata
from asl_pipeline.workflows.cbf import init_cbf_wf


def test_single_pld_text_has_the_runs_values():
    meta = {
        "ArterialSpinLabelingType": "PCASL",
        "PostLabelingDelay": 2.0,
        "LabelingDuration": 1.5,
        "M0Type": "Separate",
        "MagneticFieldStrength": 3,
        "MRAcquisitionType": "2D",
        "SliceTiming": [0.0, 0.05, 0.1],
        "BackgroundSuppression": True,
        "BackgroundSuppressionNumberPulses": 4,
        "LabelingEfficiency": 0.8,
        "RepetitionTimePreparation": 4.4,
    }
    desc = describe_metadata(
        meta, ["control", "label"] * 4, m0_metadata={"RepetitionTimePreparation": 6.0}
    )
    text = init_cbf_wf(description=desc, n_pairs=4, denoise=False).__desc__
    for part in (
        "PCASL labeling",
        "labeling duration 1.5 s",
        "post-labeling delay 2 s",
        "2D readout",
        "up to 0.1 s",
        "labeling efficiency 0.8 times 0.95 per background-suppression pulse (4 pulses: 0.652)",
        "blood T1 1.65 s at 3 T",
        "partition coefficient of 0.9 mL/g",
        "a separate M0 scan",
        "repetition time of 6 s",
        "GM/WM/CSF fractions",
    ):
        assert part in text, part


def test_multi_pld_pasl_text():
    meta = {
        "ArterialSpinLabelingType": "PASL",
        "PostLabelingDelay": [0, 1.2, 1.2, 1.8, 1.8],
        "BolusCutOffFlag": True,
        "BolusCutOffTechnique": "Q2TIPS",
        "BolusCutOffDelayTime": [0.7, 1.6],
        "M0Type": "Included",
        "MagneticFieldStrength": 1.5,
        "MRAcquisitionType": "3D",
        "RepetitionTimePreparation": 4.0,
    }
    desc = describe_metadata(meta, ["m0scan", "control", "label", "control", "label"])
    text = init_cbf_wf(
        description=desc, n_pairs=2, multi_pld=True, denoise=False, m0_recovery="single"
    ).__desc__
    for part in (
        "Buxton et al. 1998",
        "PASL labeling",
        "bolus duration TI1 0.7 s (Q2TIPS)",
        "inversion time TI 1.2, 1.8 s",
        "3D readout",
        "blood T1 1.35 s at 1.5 T",
        "the M0 volumes of the series",
        "a tissue T1 of",
    ):
        assert part in text, part
