#!/usr/bin/env bash
# The test command: installs what is needed (tools/install.sh), checks lint (ruff), builds the
# docs (mkdocs, warnings are errors) and runs the test suite.
# Extra arguments go to pytest, e.g. `tools/test.sh -k rnnt -x`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
python=$(tools/install.sh)
"$python" -m ruff check .
"$python" -m ruff format --check .
"$python" -m mkdocs build --strict --quiet
"$python" -m pytest "$@"
