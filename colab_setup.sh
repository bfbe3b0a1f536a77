#!/usr/bin/env bash
# Set newllm up on Google Colab (or any fresh Linux machine with Python >= 3.10).
#   bash colab_setup.sh            clone or update the repo and install what the notebooks need
# Colab preinstalls torch, numpy, pandas, matplotlib, ipywidgets and tqdm, and its kernel has often imported some of
# them already: replacing one breaks Colab's own widgets or needs a runtime restart. So every one of them that is
# installed is pinned to its installed version (a pip constraints file): pip installs the rest around them, or stops
# with a resolution error naming the conflict, and never replaces them.
# Google Drive: set MOUNT_DRIVE = True in a notebook's first cell; mounting needs the notebook's kernel, so it is
# done there (results then go to MyDrive/newllm-results through NEWLLM_RESULTS_DIR), not by this script.
# Safe to run twice: an existing clone is updated with a fast-forward pull, nothing is wiped.
# NEWLLM_PIP_REPORT=FILE: resolve only (pip --dry-run) and write pip's JSON report of what would be installed to FILE.
set -euo pipefail
REPO_URL="${NEWLLM_REPO_URL:-https://github.com/newllm/newllm.git}"
TARGET="${NEWLLM_DIR:-$PWD/newllm}"
PRESERVED="torch numpy pandas matplotlib ipywidgets tqdm"

if [ -f "pyproject.toml" ] && grep -q 'name = "newllm"' pyproject.toml; then
  TARGET="$PWD"                                  # already inside a checkout
elif [ -d "$TARGET/.git" ]; then
  git -C "$TARGET" pull --ff-only || echo "colab_setup: could not fast-forward $TARGET; keeping the local copy"
else
  git clone --depth 1 "$REPO_URL" "$TARGET"
fi
cd "$TARGET"

CONSTRAINTS="$(mktemp /tmp/newllm-preinstalled-XXXX.txt)"
python3 - "$CONSTRAINTS" $PRESERVED <<'PY'
import sys
from importlib import metadata

pins = []
for name in sys.argv[2:]:
    try:
        pins.append(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
open(sys.argv[1], "w").write("\n".join(pins) + "\n")
print("colab_setup: keeping the preinstalled", ", ".join(pins) or "(none of them is installed)")
PY

if [ -n "${NEWLLM_PIP_REPORT:-}" ]; then
  python3 -m pip install -q --dry-run --report "$NEWLLM_PIP_REPORT" -r requirements-colab.txt \
    -c "$CONSTRAINTS"
  exit 0
fi
REPORT="$(mktemp /tmp/newllm-pip-report-XXXX.json)"
python3 -m pip install -q --report "$REPORT" -r requirements-colab.txt -c "$CONSTRAINTS"
python3 -m pip install -q --no-deps -e .
python3 - "$REPORT" <<'PY'
import json, sys

changed = sorted(item["metadata"]["name"] for item in json.load(open(sys.argv[1]))["install"])
print("colab_setup: installed or upgraded:", ", ".join(changed) or "nothing")
if changed:
    print("colab_setup: if the notebook's kernel had already imported one of these, restart the runtime once.")
PY
python3 -c "import newllm, torch; print('newllm', newllm.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
