"""The job server (mpqbench.jobserver): a served command does exactly what the plain command does.

One server per module (its start imports torch and the package, a few seconds); every test compares a
command run through it with the same command run by a plain process: same files bit for bit, same
output, same exit status; plus signal forwarding, the fallbacks, and the usage lines jobs.tsv reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from mpqbench import jobserver
from mpqbench.jobs import collect_jobs

REPO = Path(__file__).resolve().parents[1]
CLIENT = [sys.executable, "-c", "import sys; from mpqbench.jobserver import main; sys.exit(main())"]


def _env(server: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (jobserver.ENV, jobserver.USAGE_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"
    if server is not None:
        env[jobserver.ENV] = server
    return {**env, **extra}


@pytest.fixture(scope="module")
def server():
    folder = tempfile.mkdtemp(prefix="mpqjs-test-")  # short: a Unix socket path has at most 107 bytes
    path = os.path.join(folder, "s.sock")
    proc = subprocess.Popen([sys.executable, "-m", "mpqbench.jobserver", "--socket", path, "--idle-exit", "600"],
                            env=_env(None), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not os.path.exists(path):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the job server did not start listening in 120 s"
        time.sleep(0.1)
    yield path
    proc.terminate()
    proc.wait(30)
    assert not os.path.exists(path), "the stopped server left its socket"
    os.rmdir(folder)


def _run(args: list[str], env: dict[str, str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLIENT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600, **kw)


def _cpu(proc: subprocess.CompletedProcess) -> float:
    """The CPU seconds of a command's usage line (MPQBENCH_USAGE=1)."""
    line = [x for x in proc.stderr.splitlines() if x.startswith(jobserver.USAGE_PREFIX)][-1]
    return float(line.split("cpu_s=")[1].split()[0])


def _plain(proc: subprocess.CompletedProcess) -> bool:
    """Whether a torch-importing command ran in a process of its own: that pays the imports (2-3 s of CPU here);
    a served child does not (`info` then takes about half a second)."""
    return _cpu(proc) > 1.5


def test_served_pretrain_is_bit_identical_to_the_plain_one(server, tmp_path):
    args = ["pretrain", "--arch", "resnet20", "--dataset", "digits", "--input-size", "8", "--width", "0.25",
            "--epochs", "1", "--batch-size", "64", "--subset", "256", "--seed", "3", "--device", "cpu",
            "--no-progress"]
    plain = _run([*args, "--out", str(tmp_path / "plain.pt")], _env(None), tmp_path)
    served = _run([*args, "--out", "served.pt"], _env(server), tmp_path)  # relative: the job's cwd counts
    assert plain.returncode == 0 and served.returncode == 0, plain.stderr + served.stderr
    assert plain.stdout.split("(")[0] == served.stdout.split("(")[0]  # "FP resnet20 on digits: top-1 …% (wall)"
    a = torch.load(tmp_path / "plain.pt", weights_only=True)
    b = torch.load(tmp_path / "served.pt", weights_only=True)
    sa, sb = a["state_dict"], b["state_dict"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_served_command_output_and_exit_status_match(server, tmp_path):
    for args, code in ((["info"], 0), (["search", "--method", "nope"], 2),
                       (["evaluate", "--ckpt", "missing.pt", "--policy", "p.json", "--fp", "f.pt",
                         "--out", "r.json"], 2)):
        plain = _run(args, _env(None, **{jobserver.USAGE_ENV: "1"}), tmp_path)
        served = _run(args, _env(server, **{jobserver.USAGE_ENV: "1"}), tmp_path)
        assert (plain.returncode, served.returncode) == (code, code), (args, plain.stderr, served.stderr)
        strip = lambda text: [x for x in text.splitlines() if not x.startswith(jobserver.USAGE_PREFIX)]  # noqa: E731
        assert strip(plain.stdout) == strip(served.stdout) and strip(plain.stderr) == strip(served.stderr), args
        if args == ["info"]:  # imports torch: the plain process pays it, the served child does not
            assert _plain(plain) and _cpu(served) < _cpu(plain) / 2
    # without MPQBENCH_USAGE there is no usage line (what a user sees at the terminal is unchanged)
    assert jobserver.USAGE_PREFIX not in _run(["info"], _env(server), tmp_path).stderr


def test_the_server_threads_follow_the_job_environment(server, tmp_path):
    for threads in ("1", "2"):
        out = _run(["info"], _env(server, OMP_NUM_THREADS=threads), tmp_path)
        assert out.returncode == 0 and f"threads   {threads}\n" in out.stdout, out.stdout


def test_a_different_checkout_or_python_path_runs_the_command_itself(server, tmp_path):
    env = _env(server, **{jobserver.USAGE_ENV: "1"})
    env["PYTHONPATH"] = str(REPO) + os.pathsep + str(tmp_path)  # another import path: not the server's
    out = _run(["info"], env, tmp_path)
    assert out.returncode == 0 and _plain(out)
    gone = _run(["info"], _env(str(tmp_path / "no.sock"), **{jobserver.USAGE_ENV: "1"}), tmp_path)
    assert gone.returncode == 0 and _plain(gone)
    off = _run(["info"], _env("0", **{jobserver.USAGE_ENV: "1"}), tmp_path)
    assert off.returncode == 0 and _plain(off)


def test_signals_reach_the_served_command(server, tmp_path):
    # a pretrain long enough to be interrupted; SIGTERM to the job's process (what Snakemake sends)
    args = ["pretrain", "--arch", "resnet20", "--dataset", "digits", "--epochs", "50", "--device", "cpu",
            "--no-progress", "--out", "long.pt"]
    proc = subprocess.Popen([*CLIENT, *args], env=_env(server), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(4.0)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err  # the child died of the forwarded SIGTERM
    assert not (tmp_path / "long.pt").exists()
    # SIGINT: the command's own handler runs (it says how to resume) and exits 130, as in a terminal
    proc = subprocess.Popen([*CLIENT, *args], env=_env(server), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(4.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err, err


@pytest.mark.slow
def test_the_server_stops_when_idle_or_orphaned(tmp_path):
    folder = tempfile.mkdtemp(prefix="mpqjs-idle-")
    path = os.path.join(folder, "s.sock")
    proc = subprocess.Popen([sys.executable, "-m", "mpqbench.jobserver", "--socket", path, "--idle-exit", "1"],
                            env=_env(None), cwd=tmp_path)
    try:
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not os.path.exists(path)
    # its parent gone: a shell that starts it with --parent <the shell's pid> and exits at once
    script = (f"{sys.executable} -m mpqbench.jobserver --socket {path} --parent $$ --idle-exit 600 & "
              "echo $!; sleep 0.5")
    out = subprocess.run(["bash", "-c", script], env=_env(None), cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the server outlived its parent")
    os.rmdir(folder)


def test_usage_line_and_jobs_tsv_read_it(tmp_path):
    bench = tmp_path / "logs" / "benchmarks" / "s"
    logs = tmp_path / "logs" / "s"
    (bench / "search" / "a").mkdir(parents=True)
    (bench / "search" / "a" / "x.tsv").write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        "12.5\t0:00:12\t100.0\t1\t1\t1\t0\t0\t0\t3.00\n")
    (bench / "check_data.tsv").write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        "2.0\t0:00:02\t50.0\t1\t1\t1\t0\t0\t0\tNA\n")
    (logs / "search" / "a").mkdir(parents=True)
    (logs / "search" / "a" / "x.log").write_text("training...\nmpqbench-usage: cpu_s=11.25 max_rss_mb=845.5\n")
    (logs / "check_data.log").write_text("ok\n")  # no usage line: Snakemake's values stay
    frame = collect_jobs(bench, snakemake_log_dir=None, job_log_dir=logs)
    rows = {r.rule: r for r in frame.itertuples()}
    assert (rows["search"].wall_s, rows["search"].cpu_s, rows["search"].max_rss_mb) == (12.5, 11.25, 845.5)
    assert rows["check_data"].max_rss_mb == 50.0 and rows["check_data"].cpu_s != rows["check_data"].cpu_s  # NaN
    without = collect_jobs(bench, snakemake_log_dir=None)
    assert without.set_index("rule").loc["search", "cpu_s"] == 3.0
    assert jobserver.read_usage(tmp_path / "missing.log") is None
    (tmp_path / "two.log").write_text("mpqbench-usage: cpu_s=1.00 max_rss_mb=2.0\nmpqbench-usage: cpu_s=3.50 "
                                      "max_rss_mb=4.0\n")
    assert jobserver.read_usage(tmp_path / "two.log") == (3.5, 4.0)
    (tmp_path / "own.log").write_text("x\n" + jobserver.usage_line() + "\n")
    cpu, rss = jobserver.read_usage(tmp_path / "own.log")
    assert cpu > 0 and rss > 10  # this test process: it imported torch
