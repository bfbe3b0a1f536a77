#!/usr/bin/env bash
# Install newllm with its test requirements, then run the whole test suite (library tests and notebook checks).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -r requirements.txt -e .
python3 -m pytest "$@"
