"""Methods from outside the repository: a package that declares a module in the ``mpqbench.methods``
entry-point group is found by discovery, listed by ``mpqbench info`` and searched like any built-in method."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugin_pkg"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The tiny plug-in installed by pip into a folder of its own (not into the venv); the env that sees it."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    source = shutil.copytree(PLUGIN, build / "pkg")  # a build writes next to its sources: keep the tree clean
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        capture_output=True, text=True, cwd=build, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    if proc.returncode != 0 and "No module named 'setuptools'" in proc.stderr:
        pytest.skip("setuptools is not installed in this environment (needed to build the plug-in)")
    assert proc.returncode == 0, proc.stderr
    assert list(target.glob("mpqbench_tiny-*.dist-info/entry_points.txt"))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)]),
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def test_an_installed_plugin_is_discovered_and_listed(installed):
    proc = subprocess.run([sys.executable, "-m", "mpqbench.cli", "info", "--json", "--device", "cpu"],
                          capture_output=True, text=True, env=installed, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    methods = json.loads(proc.stdout)["methods"]
    assert "tiny-wide-weights" in methods and "hawq" in methods and "asga" in methods
    # without the plug-in on the path, it is not there
    plain = subprocess.run([sys.executable, "-m", "mpqbench.cli", "info", "--json", "--device", "cpu"],
                           capture_output=True, text=True, cwd=ROOT)
    assert "tiny-wide-weights" not in json.loads(plain.stdout)["methods"]


def test_an_installed_plugin_searches_like_a_builtin(installed, tmp_path):
    out = tmp_path / "p.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mpqbench.cli", "search", "--method", "tiny-wide-weights", "--arch", "resnet20",
         "--proxy", "digits", "--target", "digits", "--budget", "w3a3", "--width", "0.25", "--device", "cpu",
         "--no-progress", "--w-candidates", "2,3,4,8", "--a-candidates", "2,3", "--out", str(out)],
        capture_output=True, text=True, env=installed, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    policy = json.loads(out.read_text())
    # W4 is the widest weight that fits w3a3 with A2 everywhere (4·2 ≤ 9 < 8·2)
    assert {(b["w"], b["a"]) for b in policy["layers"].values()} == {(4, 2)}
    assert policy["search"]["role"] == "control" and policy["search"]["hparams"]["method"] == "tiny-wide-weights"
