"""BIDS-derivative file names, provenance and the dataset's top-level files.

Names follow the BIDS derivatives conventions and, where they overlap, the
names established ASL derivatives use (``desc-mean_cbf``,
``desc-timeseries_cbf``, ``desc-confounds_timeseries``, ...). Files the BIDS
schema has no rule for yet are listed in the dataset's ``.bidsignore``, each
group under a comment saying why.

Provenance is written as BIDS URIs: ``bids:raw:sub-01/perf/sub-01_asl.nii.gz``
for a file of the input dataset (``DatasetLinks["raw"]`` in
``dataset_description.json`` says where it is) and
``bids::sub-01/perf/sub-01_desc-mean_cbf.nii.gz`` for a file of this
derivatives dataset. No sidecar holds an absolute or work-directory path.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from asl_pipeline import __version__

#: Entities kept from the source file, in BIDS order.
SOURCE_ENTITIES = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo")
#: Entities a derivative may add, in BIDS order.
DERIVED_ENTITIES = ("fmapid", "from", "to", "mode", "space", "res", "label", "desc")

#: Name of the input dataset in BIDS URIs (``bids:raw:...``).
RAW = "raw"

#: ``.bidsignore`` of the outputs: (why, patterns). Only what BIDS 1.11 (schema
#: 2.0) cannot name; masks, probsegs and the T1w in ``anat/``, the
#: preprocessed ASL series and M0 in ``perf/`` validate and are not listed.
BIDSIGNORE = (
    (
        "CBF and ATT maps and their tables: the schema has no suffix for quantitative "
        "perfusion maps (ASL derivatives BEP pending); names follow ASLPrep",
        ("*_cbf.nii.gz", "*_cbf.json", "*_cbf.tsv", "*_att.nii.gz", "*_att.json"),
    ),
    (
        "outlier tables (slice x pair matrix, pair status): no schema rule for them",
        ("*_outliers.tsv", "*_outliers.json"),
    ),
    (
        "confounds: the schema defines _timeseries only for raw physiological recordings "
        "(.tsv.gz); desc-confounds_timeseries.tsv is the fMRIPrep/ASLPrep convention",
        ("*_desc-confounds_timeseries.tsv", "*_desc-confounds_timeseries.json"),
    ),
    (
        "ASL reference image: the schema has no _aslref suffix (as fMRIPrep's _boldref)",
        ("*_aslref.nii.gz", "*_aslref.json"),
    ),
    (
        "masks and tissue probability maps in ASL space: the schema allows _mask and "
        "_probseg in anat/, func/ and dwi/ but not in perf/",
        ("**/perf/*_mask.*", "**/perf/*_probseg.*"),
    ),
    ("spatial transforms: the schema has no rule for _xfm files", ("*_xfm.*",)),
    (
        "estimated field maps: SDCFlows' naming (fmapid entity, desc-preproc_fieldmap), "
        "which the raw-data schema does not cover",
        ("**/fmap/*_fieldmap.*",),
    ),
    (
        "reports and logs (with the run's configuration): not data files",
        ("*.html", "figures", "logs"),
    ),
    (
        "group level (asl-pipeline ... group): dataset-level tables and figures",
        ("group_*",),
    ),
)

#: Environment variables that name the container image the pipeline runs in.
CONTAINER_VARS = ("ASL_PIPELINE_CONTAINER", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER")

HOW_TO_ACKNOWLEDGE = (
    "Please cite asl_pipeline (name and version in GeneratedBy) and the methods named in "
    "the methods text of each subject's report (sub-*/figures/*_report.html), which lists "
    "its references: at least the ASL white paper (Alsop et al. 2015, Magn Reson Med "
    "73:102-116) and, when outlier cleaning ran, the cleaning method's paper."
)

_ENTITY = re.compile(r"([a-zA-Z0-9]+)-([a-zA-Z0-9]+)")


def parse_entities(path: str | Path) -> dict[str, str]:
    """BIDS entities of a file name (``sub-01_ses-1_asl.nii.gz`` -> sub, ses)."""
    name = Path(path).name.split(".")[0]
    return {m.group(1): m.group(2) for part in name.split("_") if (m := _ENTITY.fullmatch(part))}


def derivative_path(
    source_file: str | Path,
    *,
    suffix: str,
    extension: str = ".nii.gz",
    datatype: str = "perf",
    **entities: str | None,
) -> Path:
    """Relative path of a derivative of ``source_file``.

    ``entities`` may be any of :data:`DERIVED_ENTITIES` (use ``from_`` for
    ``from``); ``None`` values are left out.
    """
    src = parse_entities(source_file)
    if "sub" not in src:
        raise ValueError(f"{source_file}: not a BIDS file name (no 'sub-' entity)")
    extra = {k.rstrip("_"): v for k, v in entities.items() if v is not None}
    unknown = set(extra) - set(DERIVED_ENTITIES)
    if unknown:
        raise ValueError(f"unknown derivative entities {sorted(unknown)}")
    parts = [f"{k}-{src[k]}" for k in SOURCE_ENTITIES if k in src]
    parts += [f"{k}-{extra[k]}" for k in DERIVED_ENTITIES if k in extra]
    folder = Path(f"sub-{src['sub']}")
    if "ses" in src:
        folder /= f"ses-{src['ses']}"
    return folder / datatype / ("_".join(parts + [suffix]) + extension)


def dataset_root(path: str | Path) -> Path:
    """The BIDS dataset holding ``path``: the parent of its ``sub-<label>`` folder."""
    path = Path(os.path.abspath(path))
    for folder in path.parents:
        if folder.name.startswith("sub-"):
            return folder.parent
    raise ValueError(f"{path}: not inside a BIDS dataset (no sub-<label> folder above it)")


def raw_uri(path: str | Path) -> str:
    """BIDS URI of a file of the input dataset: ``bids:raw:sub-01/perf/sub-01_asl.nii.gz``."""
    rel = Path(os.path.abspath(path)).relative_to(dataset_root(path))
    return f"bids:{RAW}:{rel.as_posix()}"


def bids_uri(path: str | Path, roots: Mapping[str, str | Path]) -> str | None:
    """BIDS URI of ``path`` under one of ``roots`` (dataset name -> folder), else None.

    ``roots`` maps ``"raw"`` to the input dataset and ``""`` to this
    derivatives dataset: ``bids:raw:sub-01/perf/sub-01_asl.nii.gz``,
    ``bids::sub-01/perf/sub-01_desc-mean_cbf.nii.gz``.
    """
    path = Path(os.path.abspath(path))
    for name, root in roots.items():
        try:
            rel = path.relative_to(os.path.abspath(root))
        except ValueError:
            continue
        return f"bids:{name}:{rel.as_posix()}"
    return None


def portable_metadata(meta, roots: Mapping[str, str | Path]):
    """``meta`` with every absolute path replaced (recursively, in dicts and lists).

    A path under one of ``roots`` becomes its BIDS URI (:func:`bids_uri`); any
    other absolute path (a work-directory file, an installed model) becomes
    its file name, so that sidecars never carry machine-specific paths.
    """
    if isinstance(meta, Mapping):
        return {k: portable_metadata(v, roots) for k, v in meta.items()}
    if isinstance(meta, list | tuple):
        return [portable_metadata(v, roots) for v in meta]
    if isinstance(meta, str) and meta.startswith("/") and "\n" not in meta:
        return bids_uri(meta, roots) or Path(meta).name
    return meta


def container() -> dict | None:
    """``GeneratedBy[].Container`` when running in a container, else None.

    ``ASL_PIPELINE_CONTAINER`` (set in the images, ``docker://asl_pipeline:0.1.0``)
    or Apptainer/Singularity's own variables (the image's file name) name the
    image; ``/.dockerenv`` alone says Docker without a tag.
    """
    for var in CONTAINER_VARS:
        value = os.environ.get(var)
        if value:
            kind, sep, tag = value.partition("://")
            if not sep:  # Apptainer/Singularity give the image's path: keep its name
                kind, tag = "singularity", Path(value).name
            return {"Type": kind, "Tag": tag}
    if Path("/.dockerenv").exists():
        return {"Type": "docker"}
    return None


def code_url() -> str | None:
    """The package's source code URL (its metadata's ``Home-page``/``Project-URL``)."""
    try:
        meta = importlib_metadata.metadata("asl_pipeline")
    except importlib_metadata.PackageNotFoundError:
        return None
    urls = [u.split(",", 1)[-1].strip() for u in meta.get_all("Project-URL") or []]
    return meta.get("Home-page") or (urls[0] if urls else None)


def dataset_links(out_dir: str | Path, source_dataset: str | Path) -> dict[str, str]:
    """``DatasetLinks``: the input dataset, relative to ``out_dir`` when both are local."""
    src = Path(os.path.abspath(source_dataset))
    rel = os.path.relpath(src, os.path.abspath(out_dir))
    return {RAW: Path(rel).as_posix() if not rel.startswith("/") else src.as_uri()}


def dataset_description(out_dir: str | Path, source_dataset: str | Path | None = None) -> dict:
    """The derivatives' ``dataset_description.json`` as a dictionary."""
    generated = {
        "Name": "asl_pipeline",
        "Version": __version__,
        "Description": "ASL preprocessing, CBF quantification, outlier cleaning "
        "(PAOCSL by default) and optional DWAN denoising",
    }
    url = code_url()
    if url:
        generated["CodeURL"] = url
    box = container()
    if box:
        generated["Container"] = box
    desc = {
        "Name": "asl_pipeline derivatives",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "HowToAcknowledge": HOW_TO_ACKNOWLEDGE,
    }
    if source_dataset is None:
        return desc
    raw = _read_description(source_dataset)
    source = {"URL": f"bids:{RAW}:"}
    if raw.get("DatasetDOI"):
        source["DOI"] = str(raw["DatasetDOI"])
    if raw.get("DatasetVersion"):
        source["Version"] = str(raw["DatasetVersion"])
    desc["SourceDatasets"] = [source]
    desc["DatasetLinks"] = dataset_links(out_dir, source_dataset)
    if raw.get("License"):  # derivatives of data are under the data's license
        desc["License"] = raw["License"]
    if raw.get("Name"):
        desc["Name"] = f"asl_pipeline derivatives of {raw['Name']}"
    return desc


def _read_description(bids_dir: str | Path) -> dict:
    try:
        data = json.loads((Path(bids_dir) / "dataset_description.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _plain(obj):
    """NumPy scalars and arrays as the numbers and lists JSON writes."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def sidecar_text(meta: Mapping) -> str:
    """A sidecar's JSON text (indented, newline-terminated; NumPy values as plain ones)."""
    return json.dumps(meta, indent=2, default=_plain) + "\n"


def bidsignore_text() -> str:
    """The ``.bidsignore`` file: each group of patterns under a comment saying why."""
    lines = []
    for why, patterns in BIDSIGNORE:
        lines.append(f"# {why}")
        lines.extend(patterns)
    return "\n".join(lines) + "\n"


def write_dataset_files(out_dir: str | Path, *, source_dataset: str | Path | None = None) -> None:
    """Write ``dataset_description.json``, ``.bidsignore`` and README of the outputs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    desc = dataset_description(out_dir, source_dataset)
    (out_dir / "dataset_description.json").write_text(json.dumps(desc, indent=2) + "\n")
    (out_dir / ".bidsignore").write_text(bidsignore_text())
    readme = out_dir / "README"
    if not readme.exists():
        readme.write_text(
            "Derivatives of an ASL dataset produced by asl_pipeline "
            f"{__version__}: CBF maps, outlier cleaning, denoising, QC and reports.\n"
            "See each file's JSON sidecar for the parameters used and its Sources (BIDS "
            "URIs; bids:raw: is the input dataset named in dataset_description.json's "
            "DatasetLinks), logs/ for the run's configuration and sub-*/figures/ for the "
            "HTML reports. `asl-pipeline BIDS_DIR OUTPUT_DIR group` adds group_qc.tsv, "
            "group_report.html and per-subject regional CBF tables.\n"
        )
