#!/usr/bin/env bash
# Set newllm up on Google Colab (or any fresh Linux machine with Python >= 3.10).
#   bash colab_setup.sh            clone or update the repo and install the requirements (never touching torch)
#   MOUNT_DRIVE=1 ...              (Colab) results/ and checkpoints go to Google Drive so they survive disconnects
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

if [ "${MOUNT_DRIVE:-0}" = "1" ]; then
  python3 - <<'PY'
from pathlib import Path
try:
    from google.colab import drive  # type: ignore
except ImportError:
    print("colab_setup: MOUNT_DRIVE=1 ignored (not running on Colab)")
else:
    drive.mount("/content/drive")
    target = Path("/content/drive/MyDrive/newllm-results")
    target.mkdir(parents=True, exist_ok=True)
    link = Path("results")
    if link.is_symlink() or not link.exists():
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target)
        print(f"colab_setup: results/ -> {target}")
    else:
        print("colab_setup: results/ already exists as a folder; leaving it (copy it to Drive by hand)")
PY
fi
python3 -c "import newllm, torch; print('newllm', newllm.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
