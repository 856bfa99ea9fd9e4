#!/usr/bin/env bash
# Creates (or completes) the development environment at .venv/ with the WebUI's pins as constraints.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
PINS=constraints/host-pins-a1111-1.10.1.txt
DEV=constraints/dev-cpu.txt

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# torch first and alone: an unpinned torch pulled in by another package would be a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch ${TORCH_VERSION:-2.13.0} (CPU)"
  "${PIP[@]}" -c "$PINS" "setuptools>=68,<81" "torch==${TORCH_VERSION:-2.13.0}"
fi
echo "[setup] installing requirements under the host pins"
"${PIP[@]}" -c "$PINS" -c "$DEV" -r requirements.txt -r requirements-dev.txt
"${PIP[@]}" -c "$PINS" -c "$DEV" --no-deps -r requirements-nodeps.txt
echo "[setup] pip check (the onnx/protobuf conflict is expected, see README):"
.venv/bin/python -m pip check || true
