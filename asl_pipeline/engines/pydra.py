"""The pipeline on Pydra: the Nipype interfaces as Pydra tasks, and the Nipype
workflow's execution graph as a Pydra workflow.

Nothing here computes anything. Each Pydra task runs one existing Nipype
interface (whose ``_run_interface`` calls the core functions in
``asl_pipeline``), and the Pydra workflow is translated node for node and edge
for edge from the graph that :func:`~asl_pipeline.workflows.base.init_asl_pipeline_wf`
builds from the same :class:`~asl_pipeline.config.Config` and
:class:`~asl_pipeline.bids.ASLRun` objects. So both engines run the same steps
on the same inputs, and a change to the Nipype workflow is a change to this one.

Two levels:

* :func:`interface_task` wraps one interface class as a Pydra task whose inputs
  and outputs are the interface's (``m0_task``, ``cbf_task``, ... below), for use
  in a user's own Pydra workflow (see ``examples/embed_in_pydra.py``).
* :func:`init_pydra_wf` turns the whole Nipype graph into a Pydra workflow with
  one sub-workflow per subject; each task runs one Nipype node (so connection
  functions and MapNodes behave exactly as under Nipype) and hands its
  downstream tasks the path of the node's result file.

Requires ``pydra==0.25``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import typing as ty
from collections import defaultdict
from copy import deepcopy
from pathlib import Path

import attr
import pydra
from pydra.engine.specs import BaseSpec, SpecInfo

#: Pydra worker for each ``--plugin`` choice.
WORKERS = {"Linear": "serial", "MultiProc": "cf", "SLURM": "slurm"}


def _undefined_to_none(value):
    from nipype.interfaces.base import isdefined

    return value if isdefined(value) else None


def _run_interface(_interface: str, **inputs) -> dict:
    """Instantiate ``module:Class``, set the inputs given (None = unset), run it
    in the current directory (the Pydra task's output directory) and return its
    outputs, unset ones as None."""
    module, cls = _interface.split(":")
    interface = getattr(importlib.import_module(module), cls)()
    interface.inputs.trait_set(**{k: v for k, v in inputs.items() if v is not None})
    result = interface.run(cwd=os.getcwd())
    return {k: _undefined_to_none(v) for k, v in result.outputs.get().items()}


def interface_task(interface_cls, name: str | None = None, **inputs):
    """A Pydra task running the Nipype interface class ``interface_cls``.

    Its inputs are the interface's inputs (all optional; None leaves one unset
    so the interface's default applies), its outputs the interface's outputs.
    ``inputs`` are passed on as in any Pydra task (values or lazy fields).

    The cache key of a file input is its path, as for any untyped Pydra input;
    the per-node tasks of :func:`init_pydra_wf` add Nipype's content hash.
    """
    spec = interface_cls.input_spec()
    in_fields = [
        (
            field,
            attr.ib(
                type=ty.Any,
                default=None,
                metadata={"help_string": spec.trait(field).desc or field},
            ),
        )
        for field in spec.visible_traits()
    ]
    in_fields.append(
        (
            "_interface",
            attr.ib(
                type=str,
                default=f"{interface_cls.__module__}:{interface_cls.__name__}",
                metadata={"help_string": "the Nipype interface run"},
            ),
        )
    )
    out_fields = [(field, ty.Any) for field in interface_cls.output_spec().visible_traits()]
    return pydra.engine.task.FunctionTask(
        _run_interface,
        name=name or interface_cls.__name__,
        input_spec=SpecInfo(name="Inputs", fields=in_fields, bases=(BaseSpec,)),
        output_spec=SpecInfo(name="Outputs", fields=sorted(out_fields), bases=(BaseSpec,)),
        **inputs,
    )


def _task_factory(module: str, cls: str, doc: str):
    def make(name: str | None = None, **inputs):
        return interface_task(getattr(importlib.import_module(module), cls), name, **inputs)

    make.__doc__ = f"{doc}: a Pydra task running :class:`{module}.{cls}`."
    make.__name__ = make.__qualname__ = f"{cls}_task"
    return make


m0_task = _task_factory("asl_pipeline.interfaces.cbf", "ComputeM0", "The M0 image")
cbf_task = _task_factory("asl_pipeline.interfaces.cbf", "ComputeCBF", "Single-PLD CBF")
multi_pld_cbf_task = _task_factory(
    "asl_pipeline.interfaces.cbf", "ComputeMultiPLDCBF", "Multi-PLD CBF and ATT"
)
clean_task = _task_factory("asl_pipeline.interfaces.outliers", "CleanCBF", "Outlier cleaning")
realign_task = _task_factory("asl_pipeline.interfaces.motion", "ASLRealign", "Motion correction")
t1w_preprocess_task = _task_factory(
    "asl_pipeline.interfaces.registration", "T1wPreprocess", "T1w preprocessing"
)
asl_to_t1w_task = _task_factory(
    "asl_pipeline.interfaces.registration", "ASLToT1w", "ASL-to-T1w registration"
)
dwan_task = _task_factory("asl_pipeline.interfaces.denoise", "DWANDenoise", "DWAN inference")
derivatives_task = _task_factory(
    "asl_pipeline.interfaces.bids", "DerivativesDataSink", "A BIDS derivative file"
)


# --- the Nipype workflow on Pydra ------------------------------------------------------


def run_nipype_node(payload: str, key: str, **upstream) -> str:
    """Run the pickled Nipype node in ``payload`` in the current directory.

    ``upstream`` maps ``in_<i>`` to the result files of the source nodes; the
    node reads its connected inputs from them exactly as under Nipype's own
    plugins. Returns the path of this node's result file. ``key`` only enters
    Pydra's checksum (it is the node's interface and Nipype content hash).
    """
    with open(payload, "rb") as stream:
        data = pickle.load(stream)
    os.environ.update(data["environ"])
    node = data["node"]
    node.base_dir = os.getcwd()
    for dest, (source, conn) in data["sources"].items():
        node.input_source[dest] = (upstream[source], conn)
    node.run()
    return os.path.join(node.output_dir(), f"result_{node.name}.pklz")


def _node_task(name: str, payload: Path, key: str, upstream: dict):
    fields = [
        ("payload", attr.ib(type=str, metadata={"help_string": "the pickled Nipype node"})),
        ("key", attr.ib(type=str, metadata={"help_string": "interface and input hash"})),
    ]
    fields += [
        (field, attr.ib(type=str, metadata={"help_string": "a source node's result file"}))
        for field in sorted(upstream)
    ]
    return pydra.engine.task.FunctionTask(
        run_nipype_node,
        name=name,
        input_spec=SpecInfo(name="Inputs", fields=fields, bases=(BaseSpec,)),
        output_spec=SpecInfo(name="Outputs", fields=[("result_file", str)], bases=(BaseSpec,)),
        payload=str(payload),
        key=key,
        **upstream,
    )


def _task_name(node) -> str:
    """A Python identifier for a node, unique in its subject's workflow."""
    parts = node.itername.split(".")[2:]  # drop asl_pipeline_wf.sub_XX_wf
    return "_".join(parts).replace("-", "_")


def _node_key(node) -> str:
    """The interface class and Nipype's content hash of the node's fixed inputs."""
    iface = type(node.interface)
    static = node.inputs.get_hashval(hash_method="content")[1]
    iterfield = getattr(node, "iterfield", None)
    text = f"{iface.__module__}.{iface.__name__}|{static}|{iterfield}"
    return hashlib.sha256(text.encode()).hexdigest()


def execution_graph(nipype_wf):
    """Nipype's execution graph of ``nipype_wf``: flattened, iterables
    expanded, pass-through IdentityInterface nodes removed."""
    from nipype.pipeline.engine.utils import generate_expanded_graph

    return generate_expanded_graph(deepcopy(nipype_wf._create_flat_graph()))


def init_pydra_wf(config, runs, payload_dir: Path) -> pydra.Workflow:
    """The Pydra workflow of ``config`` and ``runs``: one sub-workflow per
    subject, one task per node of the Nipype execution graph.

    The nodes are pickled under ``payload_dir`` (the work directory); the task
    of a node takes the pickle's path, a key of its static inputs (Nipype's
    content hash, so an edited input file reruns the node) and its source
    nodes' result files, which is what Pydra's cache checks.
    """
    from nipype import config as nipype_config
    from nipype.pipeline.engine import JoinNode
    from nipype.pipeline.engine.utils import merge_dict

    from asl_pipeline.itkthreads import ENV_VAR as ITK_THREADS_VAR
    from asl_pipeline.workflows.base import init_asl_pipeline_wf

    graph = execution_graph(init_asl_pipeline_wf(config, runs))
    # the thread count of ITK that run_workflow sets, for workers that do not
    # inherit this process's environment (the seed is a node input)
    environ = {k: os.environ[k] for k in (ITK_THREADS_VAR,) if k in os.environ}
    by_subject = defaultdict(list)
    for node in graph.nodes():
        if isinstance(node, JoinNode):
            raise NotImplementedError(f"JoinNode {node.fullname} has no Pydra translation")
        by_subject[node.itername.split(".")[1]].append(node)

    payload_dir = Path(payload_dir)
    payload_dir.mkdir(parents=True, exist_ok=True)
    top = pydra.Workflow(name="asl_pipeline_wf", input_spec=["payload_dir"])
    top.inputs.payload_dir = str(payload_dir)
    outputs = []
    for subject_wf_name in sorted(by_subject):
        nodes = by_subject[subject_wf_name]
        sub = pydra.Workflow(name=subject_wf_name, input_spec=["payload_dir"])
        sub.inputs.payload_dir = top.lzin.payload_dir
        names = {node: _task_name(node) for node in nodes}
        for node in _topological(graph, nodes):
            sources, upstream = {}, {}
            for i, src in enumerate(sorted(graph.predecessors(node), key=lambda n: names[n])):
                upstream[f"in_{i}"] = getattr(sub, names[src]).lzout.result_file
                for conn_src, dest in graph.get_edge_data(src, node)["connect"]:
                    sources[dest] = (f"in_{i}", conn_src)
            # Nipype's settings as Workflow.run gives them to each node
            node.config = merge_dict(deepcopy(nipype_config._sections), node.config or {})
            payload = payload_dir / f"{node.itername}.pklz"
            with open(payload, "wb") as stream:
                pickle.dump(
                    {
                        "node": node,
                        "sources": sources,
                        "environ": environ,
                    },
                    stream,
                )
            sub.add(_node_task(names[node], payload, _node_key(node), upstream))
        sub.set_output([(names[n], getattr(sub, names[n]).lzout.result_file) for n in nodes])
        top.add(sub)
        lzout = getattr(top, subject_wf_name).lzout
        outputs += [(f"{subject_wf_name}_{names[n]}", getattr(lzout, names[n])) for n in nodes]
    top.set_output(outputs)
    return top


def _topological(graph, nodes):
    import networkx as nx

    wanted = set(nodes)
    return [n for n in nx.topological_sort(graph) if n in wanted]


def run_pydra(
    workflow, plugin: str, nprocs: int, cache_dir: Path, plugin_args: dict | None = None
):
    """Run ``workflow`` with the Pydra worker of the ``--plugin`` choice."""
    if plugin not in WORKERS:
        raise ValueError(
            f"--plugin {plugin} has no Pydra worker; with --engine pydra choose one of "
            f"{', '.join(WORKERS)}"
        )
    worker = WORKERS[plugin]
    args = dict(plugin_args or {})
    kwargs = {}
    if worker == "cf":
        kwargs["n_procs"] = int(args.get("n_procs", max(1, int(nprocs))))
    if worker == "slurm" and args.get("sbatch_args"):
        kwargs["sbatch_args"] = args["sbatch_args"]
    workflow.cache_dir = str(cache_dir)
    with pydra.Submitter(plugin=worker, **kwargs) as submitter:
        submitter(workflow)
    result = workflow.result()
    if result is None or result.errored:
        # a failed task alone (no workflow around it) is recorded, not raised
        raise RuntimeError(
            f"Pydra task {workflow.name} failed: see {workflow.output_dir}/_error.pklz"
        )
    return result
