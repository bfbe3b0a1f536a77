"""Phase 2 data-parallel: 2 gloo processes under torchrun follow the 1-process loss trajectory on the same global
batch, and a 2-process run resumes exactly from rank 0's checkpoint."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "phase2_ddp.py"

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not installed")


def launch(tmp_path, name: str, ranks: int, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    if ranks == 1:
        command = [sys.executable, str(SCRIPT)]
    else:
        command = ["torchrun", "--standalone", f"--nproc_per_node={ranks}", str(SCRIPT)]
    done = subprocess.run([*command, "--out", str(out), *extra], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()) if out.exists() else {}


def test_two_gloo_processes_match_one_process_and_resume_exactly(tmp_path):
    one = launch(tmp_path, "one", 1, "--micro-batch-size", "48")
    two = launch(tmp_path, "two", 2, "--micro-batch-size", "48")
    assert two["world_size"] == 2 and len(two["losses"]) == len(one["losses"]) == 6
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert two["val_loss"] == pytest.approx(one["val_loss"], abs=1e-5)
    assert one["losses"][-1] < one["losses"][0]  # it trains

    checkpoint = tmp_path / "ddp.safetensors"
    launch(tmp_path, "stopped", 2, "--checkpoint", str(checkpoint), "--stop-after", "3")
    assert checkpoint.exists()  # written by rank 0
    resumed = launch(tmp_path, "resumed", 2, "--checkpoint", str(checkpoint), "--resume")
    assert resumed["steps"] == two["steps"]
    assert resumed["losses"] == pytest.approx(two["losses"][3:], abs=1e-6)
    assert resumed["val_loss"] == pytest.approx(two["val_loss"], abs=1e-6)
