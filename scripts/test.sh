#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (this is what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
# torch first and pinned: 2.13.0 is the CPU build on these machines; anything looser may pull CUDA wheels.
python -m pip install --quiet --disable-pip-version-check torch==2.13.0
python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
# The chat page is tested in a real headless Chromium (Debian packages).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
    || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
python -m pytest -q "$@"
