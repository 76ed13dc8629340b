"""`make gpu-check` runs on GPU machines only; here it must refuse in one line, not crash."""

import subprocess
import sys

from conftest import REPO


def test_gpu_check_refuses_clearly_without_a_gpu():
    out = subprocess.run([sys.executable, str(REPO / "scripts/gpu_check.py")], capture_output=True, text=True,
                         cwd=REPO, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert out.returncode == 2 and "no GPU is visible" in out.stderr and "Traceback" not in out.stderr
