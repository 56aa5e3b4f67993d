"""Helpers for the kill-and-rerun tests (tests/test_fault.py): a frozen copy of the code and the workflow, suites
derived from the smoke suite, snakemake started in its own process group and killed with SIGKILL, and the
comparison of two runs' JSON outputs field by field.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "profiles")
CODE = ("mpqbench", "baselines")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


# ---- a frozen copy of the code --------------------------------------------------------------------------------
def snapshot(dest: Path) -> Path:
    """Copy the workflow files and the Python packages of this checkout to ``dest``.

    Every run of a test module copies its workflow from here and imports mpqbench from here (PYTHONPATH), so the
    clean run and the killed run use the same code even when the checkout is edited while the tests run."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*WORKFLOW_FILES, *CODE):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=_IGNORE)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def workdir(snap: Path, dest: Path) -> Path:
    """A fresh workflow directory (the workflow files of ``snap``; the code stays in ``snap``)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = snap / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=_IGNORE)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def env_for(snap: Path) -> dict[str, str]:
    """The environment of the real CLI: the venv's ``mpqbench`` on PATH, importing the frozen code."""
    return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(snap),
                DVC_NO_ANALYTICS="1")


def derive_suite(cwd: Path, name: str, methods: dict[str, dict], search: dict[str, Any]) -> str:
    """Write ``config/<name>.yaml``: config/smoke.yaml with another suite name, these methods and search stage,
    every output inside ``cwd``. Returns the suite file's path relative to ``cwd``."""
    cfg = yaml.safe_load((cwd / "config" / "smoke.yaml").read_text())
    cfg.update(suite=name, description=f"{name}: a kill-and-rerun test suite derived from smoke.yaml",
               results_dir=f"work/{name}/results", work_dir="work", log_dir="logs", budgets=["w3a3"], seeds=[0],
               methods=methods, search=search)
    path = cwd / "config" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path.relative_to(cwd))


def smoke_methods(labels: list[str], cwd: Path) -> dict[str, dict]:
    """These method entries of the smoke suite, each on the default proxy only and without curve lengths."""
    entries = yaml.safe_load((cwd / "config" / "smoke.yaml").read_text())["methods"]
    return {label: {k: v for k, v in entries[label].items() if k not in ("proxies", "lengths")} for label in labels}


# ---- snakemake ------------------------------------------------------------------------------------------------
# generous: a limit catches a hang, not a slow machine (on 2 busy cores the small fault suite has taken 500 s)
TIMEOUT_S = 1800


def snakemake(cwd: Path, *args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def start_snakemake(cwd: Path, *args: str, env: dict[str, str], output: Path) -> subprocess.Popen:
    """snakemake in a session of its own: its process group holds it and every job it starts."""
    with output.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` (Linux /proc; elsewhere: whether any exists)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except ProcessLookupError:
            return []
    members = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields after "(comm)": state, ppid, pgrp, ...
            members.append(int(stat.parent.name))
    return members


def kill_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGKILL snakemake and every job of its process group; return once none of them runs any more."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while _group_members(proc.pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of group {proc.pid} survive SIGKILL: {_group_members(proc.pid)}")
        time.sleep(0.05)


def wait_for(condition: Callable[[], Any], proc: subprocess.Popen, timeout: float, what: str, poll: float = 0.05):
    """Poll ``condition`` until it returns something truthy (returned); None if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            return None
        if time.monotonic() > deadline:
            kill_group(proc)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def job_logs(cwd: Path, suite: str) -> list[Path]:
    return sorted((cwd / "logs" / suite).rglob("*.log"))


def running_jobs(output: str, suite: str) -> list[str]:
    """Jobs snakemake had started but not finished (from its output), named by their log path under
    ``logs/<suite>/`` without ``.log`` (the rule name for a job without a log)."""
    started: dict[str, str] = {}
    for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", output, re.M):
        body = match.group(2)
        jobid = re.search(r"^\s+jobid: (\d+)", body, re.M)
        log = re.search(r"^\s+log: (\S+)", body, re.M)
        if jobid:
            # every log path of the workflow starts with its rule's name: logs/<suite>/<rule>[/<cell>].log
            started[jobid.group(1)] = (log.group(1).removeprefix(f"logs/{suite}/").removesuffix(".log") if log
                                       else match.group(1))
    finished = set(re.findall(r"^Finished jobid: (\d+)", output, re.M))
    return [name for jobid, name in started.items() if jobid not in finished]


# ---- comparing outputs ----------------------------------------------------------------------------------------
def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested JSON as {"a.b[0].c": leaf}."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    if isinstance(obj, list):
        out = {}
        for i, value in enumerate(obj):
            out.update(flatten(value, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: obj}


def json_differences(a: dict, b: dict, volatile: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Every leaf where ``a`` and ``b`` differ (``key: a != b``), leaving out the ``volatile`` keys."""
    fa, fb = flatten(a), flatten(b)
    return [f"{key}: {fa.get(key, '<absent>')!r} != {fb.get(key, '<absent>')!r}"
            for key in sorted(set(fa) | set(fb)) if key not in volatile and fa.get(key) != fb.get(key)]


def json_files(folder: Path) -> dict[str, dict]:
    """Every ``*.json`` under ``folder``, by path relative to it."""
    return {str(p.relative_to(folder)): json.loads(p.read_text()) for p in sorted(folder.rglob("*.json"))}


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def benchmark(path: Path) -> dict[str, float]:
    """A snakemake benchmark TSV's first row (s, cpu_time, ...)."""
    head, row = path.read_text().splitlines()[:2]
    return {k: float(v) if re.fullmatch(r"[-+0-9.eE]+", v) else v for k, v in zip(head.split("\t"), row.split("\t"))}
