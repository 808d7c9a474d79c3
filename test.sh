#!/usr/bin/env bash
# Install the supported stacks (first run only) and run the test suite on each.
#   ./test.sh            all stacks: "latest", "webui" (AUTOMATIC1111 1.10 pins) and "forge" (gradio 4.x)
#   ./test.sh latest     one stack;  extra arguments after it go to pytest
set -uo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
stacks=("latest" "webui" "forge")
if [ $# -gt 0 ] && [ -f "constraints/$1.txt" ]; then stacks=("$1"); shift; fi

install_stack() {  # $1 = stack name; venv in .venv-<stack>
  local venv=".venv-$1"
  [ -f "$venv/.installed" ] && [ "$venv/.installed" -nt "constraints/$1.txt" ] \
    && [ "$venv/.installed" -nt requirements-test.txt ] && return 0
  echo "== installing the $1 stack into $venv"
  "$python" -m venv "$venv" || return 1
  "$venv/bin/pip" install -q --upgrade pip || return 1
  # the host's own torch (and torchvision where the host pins one) first, so nothing else can swap it
  local torch_pins
  torch_pins=$(grep -E '^(torch|torchvision)==' "constraints/$1.txt" | tr '\n' ' ')
  "$venv/bin/pip" install -q $torch_pins || return 1
  # the constraints file pins the host's packages (fastapi, httpx, pydantic, ...) wherever pip meets them
  "$venv/bin/pip" install -q -c "constraints/$1.txt" gradio transformers \
      -r requirements.txt -r requirements-test.txt || return 1
  touch "$venv/.installed"
}

if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing chromium for the browser tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "chromium could not be installed: browser tests will be skipped"
fi

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0
for stack in "${stacks[@]}"; do
  install_stack "$stack" || { echo "== $stack: install failed"; status=1; continue; }
  echo "== testing on the $stack stack"
  # the 20 kill -9 trials run on the "latest" stack only, a 3-trial smoke run on the others (tests/test_faults.py)
  DREAMBOOTH_FULL_FAULTS=$([ "$stack" = latest ] && echo 1 || echo 0) \
    ".venv-$stack/bin/python" -m pytest -q -p no:cacheprovider "$@"
  code=$?
  if [ $code -eq 5 ]; then echo "== $stack: no tests collected"; code=0; fi  # pytest's "nothing to run"
  [ $code -ne 0 ] && { echo "== $stack: tests failed ($code)"; status=1; }
done
exit $status
