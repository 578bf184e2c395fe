"""Use asl_pipeline's interfaces and a sub-workflow inside your own Nipype pipeline.

Run it on a BIDS ASL run that your pipeline has already motion-corrected and
for which it has tissue maps in ASL space::

    python examples/embed_in_nipype.py ASL.nii.gz ASLCONTEXT.tsv ASL.json M0.nii.gz \
        MASK.nii.gz GM.nii.gz WM.nii.gz CSF.nii.gz WORKDIR [M0.json]

Give the M0's own sidecar when you have one: its ``RepetitionTimePreparation``
is what corrects an M0 acquired with a short repetition time for incomplete
recovery (without it the CBF of such a run reads about 10% high, and the
run's description warns that the correction was skipped).

It builds a two-stage graph: your own step (here a stand-in that just passes
the series through) feeding asl_pipeline's CBF sub-workflow (M0, CBF
quantification, PAOCSL outlier cleaning), plus one interface used on its own
(``ComputeCBF`` with the ASLtbx option) for comparison.
"""

from __future__ import annotations

import json
import sys

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from asl_pipeline.interfaces.cbf import ComputeCBF
from asl_pipeline.rundesc import describe_metadata, read_aslcontext
from asl_pipeline.workflows.cbf import init_cbf_wf


def build_workflow(asl, aslcontext, metadata, m0, mask, gm, wm, csf, base_dir, m0_metadata=None):
    """A user pipeline with asl_pipeline's CBF sub-workflow embedded."""
    wf = pe.Workflow(name="my_pipeline", base_dir=str(base_dir))
    # stand-in for the user's own preprocessing (e.g. their motion correction)
    my_step = pe.Node(niu.IdentityInterface(fields=["asl", "m0"]), name="my_preprocessing")
    my_step.inputs.asl = str(asl)
    my_step.inputs.m0 = str(m0)

    # the run read once, by the rules of asl_pipeline's BIDS reader
    description = describe_metadata(
        metadata,
        read_aslcontext(aslcontext),
        sidecar="asl.json",
        aslcontext=str(aslcontext),
        m0_metadata=m0_metadata,
        m0_sidecar=None if m0_metadata is None else "m0scan.json",
    )
    cbf_wf = init_cbf_wf(
        description=description, n_pairs=40, outlier_method="paocsl", denoise=False
    )
    cbf_wf.inputs.inputnode.aslcontext = str(aslcontext)
    cbf_wf.inputs.inputnode.mask = str(mask)
    cbf_wf.inputs.inputnode.gm = str(gm)
    cbf_wf.inputs.inputnode.wm = str(wm)
    cbf_wf.inputs.inputnode.csf = str(csf)

    asltbx = pe.Node(
        ComputeCBF(
            metadata=metadata,
            aslcontext=str(aslcontext),
            mask=str(mask),
            quantification="pairwise-control",
        ),
        name="asltbx_cbf",
    )
    wf.connect([
        (my_step, cbf_wf, [("asl", "inputnode.asl_file"), ("asl", "inputnode.asl_m0_source"),
                           ("m0", "inputnode.m0_file")]),
        (my_step, asltbx, [("asl", "asl_file")]),
    ])  # fmt: skip
    return wf


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (9, 10):
        print(__doc__)
        return 2
    asl, ctx, sidecar, m0, mask, gm, wm, csf, work = argv[:9]
    metadata = json.loads(open(sidecar).read())
    m0_metadata = json.loads(open(argv[9]).read()) if len(argv) == 10 else None
    wf = build_workflow(asl, ctx, metadata, m0, mask, gm, wm, csf, work, m0_metadata)
    result = wf.run()
    for node in result.nodes():
        if node.name in ("clean_cbf", "asltbx_cbf"):
            print(node.name, node.result.outputs.mean_cbf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
