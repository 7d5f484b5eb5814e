"""Helpers for workflow tests: a scratch copy of the workflow so tests never touch results/."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COPY = ("Snakefile", "rules", "workflow", "config", "profiles", "src", "environment.yml")


def smk(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def plan(wdir: Path, *extra: str) -> dict[str, str]:
    """output file -> 'no update' | 'update pending' (executes nothing)."""
    out = smk("--summary", *extra, cwd=wdir)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = csv.DictReader(io.StringIO(out.stdout), delimiter="\t")
    return {r["output_file"]: r["plan"] for r in rows}


@pytest.fixture()
def wdir(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path)
