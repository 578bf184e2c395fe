"""Use asl_pipeline's steps as tasks of your own Pydra (0.25) workflow.

Run it on a BIDS ASL run that your pipeline has already motion-corrected::

    python examples/embed_in_pydra.py ASL.nii.gz ASLCONTEXT.tsv ASL.json \
        M0.nii.gz M0.json MASK.nii.gz CACHEDIR

The workflow has three tasks: your own step (here a stand-in Pydra function
task that checks the series is 4D and passes its path on), then asl_pipeline's
M0 task and CBF task, connected by lazy fields like any Pydra tasks. Each
asl_pipeline task runs the Nipype interface of the same name
(``ComputeM0``, ``ComputeCBF``) in its own Pydra cache folder, so the numbers
are those of ``asl-pipeline``; rerunning with the same CACHEDIR reuses them.
"""

import sys

import nibabel as nb
import pydra

from asl_pipeline.engines.pydra import cbf_task, m0_task


@pydra.mark.task
def my_preprocessing(asl_file: str) -> str:
    """Stand-in for the user's own step."""
    if nb.load(asl_file).ndim != 4:
        raise ValueError(f"{asl_file}: an ASL series is 4D")
    return asl_file


def build_workflow(asl, aslcontext, metadata, m0, m0_metadata, mask, cache_dir):
    """A user's Pydra workflow with asl_pipeline's M0 and CBF tasks in it."""
    wf = pydra.Workflow(
        name="my_pipeline",
        input_spec=["asl", "aslcontext", "metadata", "m0", "m0_metadata", "mask"],
        asl=str(asl),
        aslcontext=str(aslcontext),
        metadata=str(metadata),
        m0=str(m0),
        m0_metadata=str(m0_metadata),
        mask=str(mask),
        cache_dir=str(cache_dir),
    )
    wf.add(my_preprocessing(name="mine", asl_file=wf.lzin.asl))
    common = {"aslcontext": wf.lzin.aslcontext, "metadata": wf.lzin.metadata}
    wf.add(
        m0_task(
            name="m0",
            asl_file=wf.mine.lzout.out,
            m0_file=wf.lzin.m0,
            m0_metadata=wf.lzin.m0_metadata,
            mask=wf.lzin.mask,
            **common,
        )
    )
    wf.add(
        cbf_task(
            name="cbf",
            asl_file=wf.mine.lzout.out,
            m0_file=wf.m0.lzout.m0_file,
            mask=wf.lzin.mask,
            **common,
        )
    )
    wf.set_output([("m0", wf.m0.lzout.m0_file), ("mean_cbf", wf.cbf.lzout.mean_cbf)])
    return wf


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 7:
        print(__doc__)
        return 2
    wf = build_workflow(*argv)
    with pydra.Submitter(plugin="cf", n_procs=2) as submitter:
        submitter(wf)
    result = wf.result()
    print("m0", result.output.m0)
    print("mean_cbf", result.output.mean_cbf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
