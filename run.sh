#!/usr/bin/env bash
# Install (first run only) into .venv and run the program: `./run.sh` serves the tab on
# http://127.0.0.1:7860 with the embedded tiny model; `./run.sh demo` runs the whole flow on the CLI;
# any other arguments go to `python -m dreambooth`.
set -euo pipefail
cd "$(dirname "$0")"
venv=${DREAMBOOTH_VENV:-.venv}
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.installed" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q torch==2.13.0  # torch first and pinned: an unpinned one pulls a CUDA build
  "$venv/bin/pip" install -q -c constraints/latest.txt -r requirements-standalone.txt
  touch "$venv/.installed"
fi
export HF_HUB_OFFLINE=1
exec "$venv/bin/python" -m dreambooth "$@"
