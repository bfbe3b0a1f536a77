#!/usr/bin/env bash
# Set newllm up on Google Colab (or any fresh Linux machine with Python >= 3.10).
#   bash colab_setup.sh            clone or update the repo and install the requirements (never touching torch)
# Google Drive: set MOUNT_DRIVE = True in a notebook's first cell; mounting needs the notebook's kernel, so it is
# done there (results then go to MyDrive/newllm-results through NEWLLM_RESULTS_DIR), not by this script.
# Safe to run twice: an existing clone is updated with a fast-forward pull, nothing is wiped.
set -euo pipefail
REPO_URL="${NEWLLM_REPO_URL:-https://github.com/newllm/newllm.git}"
TARGET="${NEWLLM_DIR:-$PWD/newllm}"

if [ -f "pyproject.toml" ] && grep -q 'name = "newllm"' pyproject.toml; then
  TARGET="$PWD"                                  # already inside a checkout
elif [ -d "$TARGET/.git" ]; then
  git -C "$TARGET" pull --ff-only || echo "colab_setup: could not fast-forward $TARGET; keeping the local copy"
else
  git clone --depth 1 "$REPO_URL" "$TARGET"
fi
cd "$TARGET"

# torch is preinstalled on Colab: install everything else, and never let pip replace torch.
if python3 -c "import torch" 2>/dev/null; then
  grep -v '^torch' requirements.txt > /tmp/newllm-requirements.txt
  python3 -m pip install -q -r /tmp/newllm-requirements.txt
  python3 -m pip install -q --no-deps -e .
else
  python3 -m pip install -q -r requirements.txt -e .
fi

python3 -c "import newllm, torch; print('newllm', newllm.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
