"""Every config validates and dry-runs; bad configs fail with a message naming the problem.
Run: pytest tests/workflow/test_dry_run.py -q"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, smk

CONFIGS = sorted(p.name for p in (ROOT / "config").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_dry_runs(wdir: Path, config: str):
    out = smk("-n", "--cores", "1", "--quiet", "--configfile", f"config/{config}", cwd=wdir)
    assert out.returncode == 0, out.stderr[-3000:]


def _broken(wdir: Path, edit) -> Path:
    cfg = yaml.safe_load((wdir / "config/tiny.yaml").read_text())
    edit(cfg)
    path = wdir / "config/broken.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(evalution=c.pop("evaluation")), "evalution"),
        (lambda c: c.update(methods=["full", "randm"]), "unknown method 'randm'. Known methods: .*random"),
        (lambda c: c["grid"][0].update(dataset="cifar11"), "unknown dataset 'cifar11'. Known datasets: .*cifar10"),
        (lambda c: c["grid"][0].update(ipcs=[0]), "0 is less than the minimum of 1"),
        (lambda c: c["grid"][0].update(imbalance_factors=[-5]), "-5 is less than the minimum of 1"),
        (lambda c: c["method_params"]["random"].update(ipc_polcy="x"), "did you mean 'ipc_policy'"),
        (lambda c: c["evaluation"].update(models=["resnet99"]), "unknown model 'resnet99'"),
    ],
    ids=["misspelled-key", "unknown-method", "unknown-dataset", "ipc-zero", "if-negative",
         "misspelled-method-param", "unknown-model"],
)
def test_bad_config_is_named(wdir: Path, edit, message: str):
    path = _broken(wdir, edit)
    out = smk("-n", "--cores", "1", "--configfile", str(path), cwd=wdir)
    assert out.returncode != 0
    import re

    assert re.search(message, out.stdout + out.stderr), (out.stdout + out.stderr)[-2000:]


def test_lint_has_only_explained_warnings(wdir: Path):
    """Every `snakemake --lint` finding is of a kind README's lint section explains, for a file
    it names."""
    import re

    out = smk("--lint", "--configfile", "config/tiny.yaml", cwd=wdir)
    text = out.stdout + out.stderr
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Lint"):]
    explained = {"Mixed rules and functions in same snakefile"}
    current = None
    for line in text.splitlines():
        m = re.match(r"Lints for (?:snakefile|rule) (.+):", line.strip())
        if m:
            current = Path(m.group(1)).name
            continue
        m = re.match(r"\* (.+?):?$", line.strip())
        if m and current:
            kind = m.group(1).rstrip(".:")
            assert kind in explained, f"unexplained lint finding in {current}: {kind}"
            assert current in section, f"README's lint section does not name {current}"
