"""The BIDS validator run on the input before any work starts.

``bids-validator-deno`` (the BIDS validator, installed from PyPI) checks the
input dataset against the BIDS specification, as fMRIPrep and ASLPrep do
before they run. Its errors stop the command, one line each; its warnings are
left to the user (the pipeline's own reader reports what matters to it).
Errors in subjects that ``--participant-label`` leaves out do not count.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

VALIDATOR = "bids-validator-deno"
INSTALL = "pip install bids-validator-deno"
#: Error lines printed at most; the count of the others follows.
MAX_LINES = 20


def _issue_line(root: Path, issue: dict, messages: dict) -> str:
    location = issue.get("location") or ""
    code = issue.get("code", "ERROR")
    if issue.get("subCode"):
        code += f" ({issue['subCode']})"
    message = (messages.get(issue.get("code"), "") or issue.get("issueMessage") or "").strip()
    message = " ".join(message.split()) or "see the BIDS validator's report"
    return f"{root / location.lstrip('/')}: {code}: {message}"


def _selected(issue: dict, subjects) -> bool:
    """False for an issue of a subject that is not processed."""
    first = (issue.get("location") or "").lstrip("/").split("/")[0]
    return subjects is None or not first.startswith("sub-") or first[4:] in subjects


def validator_errors(bids_dir, subjects=None) -> list[str] | None:
    """One line per error that the BIDS validator finds (none: an empty list).

    Parameters
    ----------
    bids_dir
        Root of the input dataset.
    subjects
        Labels of the subjects to process (without ``sub-``); errors in the
        folders of the others are left out. None: every subject.

    Returns
    -------
    list of str, or None when ``bids-validator-deno`` is not installed.
    """
    exe = shutil.which(VALIDATOR)
    if exe is None:
        return None
    root = Path(bids_dir)
    proc = subprocess.run(
        [exe, "--format", "json", str(root)], capture_output=True, text=True, check=False
    )
    try:
        issues = json.loads(proc.stdout)["issues"]
    except (ValueError, KeyError, TypeError):
        tail = " ".join((proc.stderr or proc.stdout or "no output").split())[-300:]
        return [f"{VALIDATOR} {root} failed (exit status {proc.returncode}): {tail}"]
    messages = issues.get("codeMessages", {})
    return [
        _issue_line(root, issue, messages)
        for issue in issues.get("issues", [])
        if issue.get("severity") == "error" and _selected(issue, subjects)
    ]


def check_input(bids_dir, subjects=None, *, err=None) -> bool:
    """Run the validator and print its verdict on ``err`` (default stderr).

    Returns False when it found errors (they are printed, at most
    :data:`MAX_LINES`, with how to proceed); True otherwise, including when
    the validator is not installed (a one-line warning says so and how to
    install it).
    """
    err = err or sys.stderr
    errors = validator_errors(bids_dir, subjects)
    if errors is None:
        print(
            f"asl-pipeline: warning: BIDS validation skipped: {VALIDATOR} is not installed "
            f"(install it with `{INSTALL}`; --skip-bids-validation silences this).",
            file=err,
        )
        return True
    for line in errors[:MAX_LINES]:
        print(f"asl-pipeline: error: {line}", file=err)
    if len(errors) > MAX_LINES:
        print(
            f"asl-pipeline: error: ... and {len(errors) - MAX_LINES} more "
            f"(`{VALIDATOR} {bids_dir}` lists them all)",
            file=err,
        )
    if errors:
        print(
            f"asl-pipeline: error: the BIDS validator found {len(errors)} error(s) in "
            f"{bids_dir}. Fix: correct them (each line names the file and the rule), or pass "
            "--skip-bids-validation to run anyway at your own risk.",
            file=err,
        )
    return not errors
