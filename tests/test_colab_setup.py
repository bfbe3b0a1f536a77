"""colab_setup.sh never replaces what Colab preinstalls, and the widgets work with Colab's ipywidgets 7.7.

A virtual environment (on top of this machine's packages) is given Colab's versions of the six packages Colab ships
and its kernel may have imported; colab_setup.sh's own pip resolution is then replayed there with
``pip install --dry-run --report`` (NEWLLM_PIP_REPORT), and the widget tests run under ipywidgets 7.7.1.
Needs the package index (as CI has); about a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Colab's preinstalled versions (torch is this machine's CPU build: Colab's CUDA build is never touched either)
COLAB_VERSIONS = {"numpy": "2.0.2", "pandas": "2.2.2", "matplotlib": "3.10.0", "tqdm": "4.67.1", "ipywidgets": "7.7.1"}
PRESERVED = ("torch", "numpy", "pandas", "matplotlib", "ipywidgets", "tqdm")


@pytest.fixture(scope="module")
def colab_like(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("colab") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    pins = [f"{name}=={version}" for name, version in COLAB_VERSIONS.items()]
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True, capture_output=True)
    return venv


def _version(python: Path, name: str) -> str:
    out = subprocess.run([str(python), "-c", f"from importlib.metadata import version; print(version({name!r}))"],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def test_colab_setup_leaves_the_preinstalled_packages_alone(colab_like, tmp_path):
    python = colab_like / "bin" / "python"
    assert _version(python, "ipywidgets") == "7.7.1"
    report = tmp_path / "report.json"
    env = {**os.environ, "PATH": f"{colab_like / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "NEWLLM_PIP_REPORT": str(report)}
    out = subprocess.run(["bash", str(REPO / "colab_setup.sh")], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "keeping the preinstalled torch==" in out.stdout and "ipywidgets==7.7.1" in out.stdout
    changed = {item["metadata"]["name"].lower(): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    touched = {name: changed[name] for name in PRESERVED if name in changed}
    assert not touched, f"colab_setup.sh would replace Colab's {touched}"


def test_an_unconstrained_install_would_replace_colabs_ipywidgets(colab_like, tmp_path):
    # the hazard the constraints guard against (googlecolab/colabtools#3020): a plain install of a requirement that
    # wants ipywidgets 8 upgrades Colab's 7.7.1
    report = tmp_path / "report.json"
    subprocess.run([str(colab_like / "bin" / "python"), "-m", "pip", "install", "-q", "--dry-run", "--report",
                    str(report), "ipywidgets>=8.0"], check=True, capture_output=True)
    changed = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "ipywidgets" in changed


def test_the_widgets_work_with_ipywidgets_7(colab_like):
    python = colab_like / "bin" / "python"
    out = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                          str(REPO / "tests" / "test_widgets.py")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "passed" in out.stdout
