"""BIDS-derivative file names and the derivative dataset's top-level files.

Names follow the BIDS derivatives conventions and, where they overlap, the
names established ASL derivatives use (``desc-mean_cbf``,
``desc-timeseries_cbf``, ``desc-confounds_timeseries``, ...). Files the BIDS
schema has no rule for yet are listed in the dataset's ``.bidsignore``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from asl_pipeline import __version__

#: Entities kept from the source file, in BIDS order.
SOURCE_ENTITIES = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo")
#: Entities a derivative may add, in BIDS order.
DERIVED_ENTITIES = ("from", "to", "mode", "space", "res", "label", "desc")

#: Patterns of derivative files without a BIDS schema rule (yet).
BIDSIGNORE = (
    "*_cbf.nii.gz",
    "*_cbf.json",
    "*_att.nii.gz",
    "*_att.json",
    "*_cbf.tsv",
    "*_outliers.tsv",
    "*_outliers.json",
    "*_timeseries.tsv",
    "*_timeseries.json",
    "*_motion.tsv",
    "*_m0scan.nii.gz",
    "*_m0scan.json",
    "*_deltam.nii.gz",
    "*_deltam.json",
    "*_asl.nii.gz",
    "*_asl.json",
    "*_mask.nii.gz",
    "*_mask.json",
    "*_probseg.nii.gz",
    "*_probseg.json",
    "*_xfm.*",
    "*_qc.tsv",
    "*_config.toml",
    "logs",
    "*.html",
    "**/figures",
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


def write_dataset_files(out_dir: str | Path, *, source_dataset: str | Path | None = None) -> None:
    """Write ``dataset_description.json`` and ``.bidsignore`` of the outputs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    desc = {
        "Name": "asl_pipeline derivatives",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "asl_pipeline",
                "Version": __version__,
                "Description": "ASL preprocessing, CBF quantification, "
                "PAOCSL outlier cleaning and DWAN denoising",
            }
        ],
    }
    if source_dataset is not None:
        desc["SourceDatasets"] = [{"URL": Path(source_dataset).resolve().as_uri()}]
    (out_dir / "dataset_description.json").write_text(json.dumps(desc, indent=2) + "\n")
    (out_dir / ".bidsignore").write_text("\n".join(BIDSIGNORE) + "\n")
    readme = out_dir / "README"
    if not readme.exists():
        readme.write_text(
            "Derivatives of an ASL dataset produced by asl_pipeline "
            f"{__version__}: CBF maps, outlier cleaning, denoising, QC and reports.\n"
            "See each file's JSON sidecar for the parameters used, logs/ for the "
            "run's configuration and sub-*/figures/ for the HTML reports.\n"
        )
