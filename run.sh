#!/usr/bin/env bash
# ltdistill entry point.
#   ./run.sh benchmark [snakemake args]   set up, run the default benchmark, build the HTML report
#   ./run.sh test [pytest args]           set up, run the whole test suite
#   ./run.sh setup                        only create .venv and install pinned dependencies
# Set LTDISTILL_PYTHON to choose the interpreter (default: python3, needs 3.10+).
set -euo pipefail
cd "$(dirname "$0")"
PY=${LTDISTILL_PYTHON:-python3}
VENV=${LTDISTILL_VENV:-.venv}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
      echo "python3 -m venv failed; installing python3-venv" >&2
      as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
      rm -rf "$VENV"; "$PY" -m venv "$VENV"
    fi
  fi
  # reinstall only when the pinned dependencies changed
  stamp="$VENV/.ltdistill-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    # torch's CUDA build alone is ~5.5 GB in the venv; pip needs room to unpack it as well
    free_gb=$(( $(df -Pk "$VENV" | awk 'NR==2 {print $4}') / 1048576 ))
    if [ "$free_gb" -lt 8 ]; then
      echo "warning: only ${free_gb} GB free on the disk holding $VENV; installing torch needs ~8 GB." >&2
      echo "  free space (old venvs, clones, pip caches) or set LTDISTILL_VENV to a larger disk" >&2
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    touch "$stamp"
  fi
  # the default dataset: Debian's real Fashion-MNIST idx files
  if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
    echo "installing Debian's dataset-fashion-mnist (the default benchmark's data)" >&2
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist \
      || echo "could not install dataset-fashion-mnist; set datasets.fashion_mnist.root or download: true" >&2
  fi
  # the native CPU ConvNet kernels (models/native.py), compiled once per machine type; without a
  # C++ compiler (and no way to install one) the jobs use the stock modules, ~1.7x slower on CPU
  if ! command -v "${CXX:-c++}" >/dev/null && command -v apt-get >/dev/null; then
    echo "installing g++ (builds the native CPU kernels)" >&2
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ \
      || echo "could not install g++: the benchmark runs on the stock modules" >&2
  fi
  "$VENV/bin/python" -m ltdistill.models.native \
    || echo "native kernels not built: the benchmark runs on the stock modules (slower on CPU)" >&2
}

cmd=${1:-help}; shift || true
case "$cmd" in
  setup) setup ;;
  benchmark)
    setup
    "$VENV/bin/snakemake" --cores all "$@"
    "$VENV/bin/snakemake" --report results/report.html "$@"
    echo "tables: results/tables/  figures: results/figures/  report: results/report.html"
    # methods that diverged or could not run left failure records: list them, exit 3
    "$VENV/bin/python" -m ltdistill.reporting.failures results/tables/evaluations.csv
    ;;
  test)
    setup
    "$VENV/bin/python" -m pytest "$@"
    ;;
  *) sed -n '2,6p' "$0"; exit 2 ;;
esac
