"""bench/gpu_check.py runs every check at tiny sizes on a CPU, so the GPU machine's one command cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_check_passes_on_a_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((tmp_path / "cpu.json").read_text())
    assert report["passed"] and report["environment"]["device"] == "cpu"
    checks = report["checks"]
    assert set(checks) == {"phase1", "recurrence", "phase2_precision", "oom", "gated_amp", "pytest_cuda",
                           "notebooks", "seed003_headline"}
    assert all(check["passed"] for check in checks.values())
    assert checks["phase1"]["sequential"]["max_abs_vs_token_loop"] < 1e-3
    assert checks["phase2_precision"]["fp16_head_gradient"]["zero_non_target_rows"] == 0
    assert set(checks["notebooks"]) >= {"scaling", "parallel_tuning", "optimize_dist_reg_weight", "advanced_training"}
