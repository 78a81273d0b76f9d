#!/usr/bin/env bash
# The test command: set up, then every test that runs on a CPU (slow ones excluded; docs/install.md),
# the docs site's strict build (tests/test_docs.py) among them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,faces,serve,dali,export,cluster,triton,docs
# A real Triton server for tests/test_triton.py, in its own venv (.venv/triton); the test skips if this fails.
bash scripts/triton_env.sh || echo "note: could not set up .venv/triton; the Triton server test will skip"
# The browser test drives Debian's Chromium (Playwright with executable_path); it skips if absent.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "note: could not install chromium; the browser test will skip"
fi
# The Slurm scripts are tested against a real single-node Slurm (slurm/local.sh starts it; needs root),
# and linted with shellcheck; those tests skip if the packages are absent.
if ! command -v slurmctld >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge shellcheck) \
    >/dev/null 2>&1 || echo "note: could not install slurm-wlm/munge/shellcheck; the Slurm tests will skip"
fi
# --durations: every CI log lists the slowest tests, so the 30-minute budget is watched, not guessed.
.venv/bin/python -m pytest -q --durations=25 "$@"
