#!/usr/bin/env bash
# Regenerate the transformers parity fixtures in a throwaway environment with torch (CPU build).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${REFERENCE_VENV:-.venv-reference}
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv with torch and transformers (reference only; never a Lamina dependency)"
  python3.11 -m venv "$venv"
  "$venv/bin/pip" install --quiet --progress-bar on torch==2.13.0 transformers safetensors numpy
fi
PYTHONPATH=service:client "$venv/bin/python" tests/parity/make_fixtures.py "$@"
