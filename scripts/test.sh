#!/usr/bin/env bash
# The test command: set up, then every test that runs on a CPU (slow ones excluded; see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,faces,serve,dali,export
# The browser test drives Debian's Chromium (Playwright with executable_path); it skips if absent.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "note: could not install chromium; the browser test will skip"
fi
.venv/bin/python -m pytest -q "$@"
