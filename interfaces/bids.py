"""Writing derivatives into a BIDS-derivatives tree."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from asl_pipeline.derivatives import RAW, dataset_root, derivative_path, portable_metadata

LOGGER = logging.getLogger("nipype.interface")


class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = traits.Str(mandatory=True, desc="root of the derivatives dataset")
    source_file = traits.Str(
        mandatory=True, desc="BIDS input file the derivative comes from (gives its entities)"
    )
    in_file = File(exists=True, mandatory=True, desc="file to store")
    suffix = traits.Str(mandatory=True, desc="BIDS suffix of the derivative (e.g. 'cbf')")
    extension = traits.Str(desc="extension; defaults to that of in_file ('.nii' -> '.nii.gz')")
    datatype = traits.Str("perf", usedefault=True, desc="datatype folder (perf, anat)")
    fmapid = traits.Str(desc="fmapid entity of a field map derivative")
    desc = traits.Str(desc="desc entity")
    space = traits.Str(desc="space entity")
    label = traits.Str(desc="label entity")
    from_space = traits.Str(desc="from entity of a transform")
    to_space = traits.Str(desc="to entity of a transform")
    mode = traits.Str(desc="mode entity of a transform")
    meta_dict = traits.Dict(desc="metadata for the JSON sidecar")
    in_meta = File(exists=True, desc="JSON sidecar of in_file, merged under meta_dict")
    sources = traits.List(
        traits.Str,
        desc="BIDS URIs of the files the derivative was made from (absolute paths under the "
        "input or output dataset are turned into BIDS URIs)",
    )
    description = traits.Str(
        desc="the sidecar's Description when neither in_meta nor meta_dict gives one"
    )
    file_keys = traits.Dict(
        traits.Str,
        traits.Str,
        desc="{sidecar key: BIDS URI}: where in_meta has the key (a work-directory file the "
        "interface used, e.g. M0File), its value becomes the URI of the stored file",
    )
    write_sidecar = traits.Bool(
        True,
        usedefault=True,
        desc="write a JSON sidecar (off for files whose BIDS rule has none, e.g. aslcontext)",
    )


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = File(desc="stored derivative")
    out_meta = File(desc="its JSON sidecar (if any metadata)")


def _extension(path: str) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".tsv", ".json", ".html", ".txt", ".mat", ".h5", ".toml", ".nii"):
        if name.endswith(ext):
            return ".nii.gz" if ext == ".nii" else ext
    return Path(path).suffix


class DerivativesDataSink(SimpleInterface):
    """Copy a result into the derivatives tree under its BIDS name, with a sidecar.

    NIfTI files are stored gzipped with a zero timestamp, so identical results
    give byte-identical files. The sidecar merges ``in_meta`` (the interface's
    own record) under ``meta_dict``; its ``Sources`` are ``sources`` only (the
    interface's are work-directory files), and every other absolute path in it
    becomes a BIDS URI (under the input or this dataset) or a bare file name.
    """

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        optional = {
            "fmapid": inputs.fmapid,
            "desc": inputs.desc,
            "space": inputs.space,
            "label": inputs.label,
            "from_": inputs.from_space,
            "to": inputs.to_space,
            "mode": inputs.mode,
        }
        entities = {k: (v or None) for k, v in optional.items()}
        ext = inputs.extension or _extension(inputs.in_file)
        rel = derivative_path(
            inputs.source_file,
            suffix=inputs.suffix,
            extension=ext,
            datatype=inputs.datatype,
            **entities,
        )
        out = Path(inputs.base_directory) / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if ext == ".nii.gz" and not inputs.in_file.endswith(".gz"):
            with open(inputs.in_file, "rb") as src, open(out, "wb") as raw:
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as dst:
                    shutil.copyfileobj(src, dst)
        else:
            shutil.copyfile(inputs.in_file, out)
        self._results["out_file"] = str(out)

        if inputs.write_sidecar and ext != ".json":
            sidecar = out.with_name(out.name[: -len(ext)] + ".json")
            meta = self._sidecar()
            sidecar.write_text(json.dumps(meta, indent=2, sort_keys=True, default=float) + "\n")
            self._results["out_meta"] = str(sidecar)
        LOGGER.info("stored %s", rel)
        return runtime

    def _sidecar(self) -> dict:
        inputs = self.inputs
        meta = {}
        if inputs.in_meta:
            meta.update(json.loads(Path(inputs.in_meta).read_text()))
        meta.pop("Sources", None)
        meta.pop("RawSources", None)
        for key, uri in (inputs.file_keys or {}).items():
            if key in meta:
                meta[key] = uri
        if inputs.meta_dict:
            meta.update(inputs.meta_dict)
        if inputs.sources:
            meta["Sources"] = list(inputs.sources)
        if inputs.description and not meta.get("Description"):
            meta["Description"] = inputs.description
        roots = {"": inputs.base_directory}
        try:
            roots[RAW] = str(dataset_root(inputs.source_file))
        except ValueError:  # a bare file name (tests): no input dataset to point into
            pass
        return portable_metadata(meta, roots)
