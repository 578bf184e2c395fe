"""The work folder's cache belongs to one version of the code.

Nipype (and Pydra) decide whether a step must run again from the step's
inputs, not from the code behind it. After an upgrade, or any change to the
package, a reused ``--work-dir`` would hand back the old results of every
step whose inputs did not change. That is how the validation panel once kept
an outlier cleaning that had since been rewritten.

The run therefore stamps the work folder with the package version and a hash
of its source (every ``.py`` of ``asl_pipeline``, its workflows and
interfaces, and the bundled data files). A later run with other code is
refused before any work, with the stamp file, the two versions and the fix:
``--clean-workdir`` (which removes only the pipeline's own cache folders) or
another ``--work-dir``. A folder that holds a cache from before the stamps
existed is refused the same way.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from functools import lru_cache
from pathlib import Path

from asl_pipeline.errors import ASLInputError

#: The stamp file, in the work folder.
STAMP_NAME = "asl_pipeline_code.json"
#: What the pipeline writes in the work folder: all that ``--clean-workdir`` removes.
CACHE_ENTRIES = ("asl_pipeline_wf", "pydra", "pydra_nodes")
_PACKAGES = ("asl_pipeline", "asl_pipeline.workflows", "asl_pipeline.interfaces")


def _package_files() -> list[tuple[str, Path]]:
    """``(name in the package, path)`` of every source and data file, sorted by name."""
    import importlib

    files = {}
    for package in _PACKAGES:
        module = importlib.import_module(package)
        for root in map(Path, module.__path__):
            for path in root.rglob("*"):
                if not path.is_file() or "__pycache__" in path.parts:
                    continue
                if path.suffix != ".py" and "data" not in path.relative_to(root).parts:
                    continue
                name = f"{package}/{path.relative_to(root).as_posix()}"
                files.setdefault(name, path)
    return sorted(files.items())


@lru_cache(maxsize=1)
def code_stamp() -> dict:
    """``{"version", "source_sha256"}`` of the installed package."""
    from asl_pipeline import __version__

    digest = hashlib.sha256()
    for name, path in _package_files():
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return {"version": __version__, "source_sha256": digest.hexdigest()}


def _describe(stamp: dict) -> str:
    source = str(stamp.get("source_sha256", "?"))[:12]
    return f"asl_pipeline {stamp.get('version', '?')} (source {source})"


def cache_problems(work_dir, *, clean: bool = False) -> list[ASLInputError]:
    """Why the cache in ``work_dir`` cannot be reused by this code (empty if it can).

    Nothing to reuse (no cache folder), a matching stamp, or ``clean`` (the
    cache is about to be removed) are fine.
    """
    work_dir = Path(work_dir)
    if clean or not work_dir.is_dir():
        return []
    stamp_file = work_dir / STAMP_NAME
    fix = (
        "pass --clean-workdir to remove the old cache (only "
        f"{', '.join(CACHE_ENTRIES)} in it), or give another --work-dir."
    )
    if stamp_file.is_file():
        try:
            stamp = json.loads(stamp_file.read_text())
        except (OSError, ValueError) as exc:
            return [
                ASLInputError(
                    f"the work folder's code stamp cannot be read ({exc}).",
                    file=stamp_file,
                    field="source_sha256",
                    fix=fix,
                )
            ]
        current = code_stamp()
        if stamp.get("source_sha256") == current["source_sha256"]:
            return []
        return [
            ASLInputError(
                f"the work folder holds results of {_describe(stamp)}, this is "
                f"{_describe(current)}: its cached steps would be reused without the "
                "changed code.",
                file=stamp_file,
                field="source_sha256",
                fix=fix,
            )
        ]
    old = [name for name in CACHE_ENTRIES if (work_dir / name).exists()]
    if not old:
        return []
    return [
        ASLInputError(
            f"the work folder holds a cache ({', '.join(old)}) of an asl_pipeline that did "
            "not stamp its code: its cached steps would be reused whatever the code.",
            file=work_dir,
            field=STAMP_NAME,
            fix=fix,
        )
    ]


def prepare_work_dir(work_dir, *, clean: bool = False) -> list[str]:
    """Remove the old cache with ``clean``, then stamp ``work_dir``; return what was removed."""
    work_dir = Path(work_dir)
    removed = []
    if clean:
        for name in CACHE_ENTRIES:
            path = work_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
                removed.append(name)
            elif path.exists() or path.is_symlink():
                path.unlink()
                removed.append(name)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp_file = work_dir / STAMP_NAME
    tmp = stamp_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(code_stamp(), indent=1) + "\n")
    tmp.replace(stamp_file)
    return removed
