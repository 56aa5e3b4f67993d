"""mpqbench.jobs: Snakemake benchmark TSVs + run logs -> one row per job, results/jobs.tsv, the suite's cost.

The benchmark and log texts below are in the format Snakemake 9 writes (checked against a real run, which
the last test repeats with a two-rule toy workflow).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mpqbench import jobs
from mpqbench.errors import UserError

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(path: Path, *rows: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


def row(s: float, rss: float | str, cpu: float | str) -> str:
    return f"{s:.2f}\t0:00:{int(s):02d}\t{rss}\t20.00\t5.00\t6.00\t0.00\t0.00\t50.00\t{cpu}"


def set_mtime(path: Path, when: str) -> None:
    t = pd.Timestamp(when).timestamp()
    os.utime(path, (t, t))


@pytest.fixture
def utc(monkeypatch):
    """Snakemake's log times are local: run these tests in UTC so the expected times are plain."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


LOG = """Assuming unrestricted shared filesystem usage.

SNAKEMAKE
=========
  Date: 2026-11-29 09:00:00
  Snakemake version: 9.27.1
  Working directory: {workdir}

Building DAG of jobs...
Select jobs to execute...
Execute 2 jobs...
[Sun Nov 29 09:00:01 2026]
localrule search:
    output: work/default/policies/resnet20/w3a3/asga/digits-to-fashion-mnist-s0.json
    log: logs/default/search/resnet20/w3a3/asga/digits-to-fashion-mnist-s0.log
    jobid: 7
    benchmark: logs/benchmarks/default/search/resnet20/w3a3/asga/digits-to-fashion-mnist-s0.tsv
    reason: Missing output files
    wildcards: arch=resnet20, budget=w3a3, method=asga, proxy=digits, seed=0
    resources: tmpdir=/tmp
[Sun Nov  9 09:00:02 2026]
rule search:
    jobid: 8
    benchmark: logs/benchmarks/default/search/resnet20/w3a3/edmips/digits-to-fashion-mnist-s0.tsv
    wildcards: arch=resnet20, budget=w3a3, method=edmips, proxy=digits, seed=0
[Sun Nov 29 09:00:31 2026]
Finished jobid: 7 (Rule: search)
1 of 3 steps (33%) done
Select jobs to execute...
[Sun Nov 29 09:00:31 2026]
localrule aggregate:
    input: results/runs/x.json
    jobid: 0
    benchmark: logs/benchmarks/default/aggregate.tsv
    reason: Input files updated by another job
[Sun Nov 29 09:00:34 2026]
Finished jobid: 0 (Rule: aggregate)
"""


def test_read_benchmark_tsv_sums_repeats_and_reads_na(tmp_path):
    one = bench(tmp_path / "a.tsv", row(29.25, "812.50", "28.90"))
    assert jobs.read_benchmark_tsv(one) == {"wall_s": 29.25, "cpu_s": 28.90, "max_rss_mb": 812.5}
    rep = bench(tmp_path / "r.tsv", row(10.0, "100.00", "9.00"), row(12.5, "150.00", "11.00"))
    assert jobs.read_benchmark_tsv(rep) == {"wall_s": 22.5, "cpu_s": 20.0, "max_rss_mb": 150.0}
    quick = jobs.read_benchmark_tsv(bench(tmp_path / "q.tsv", row(0.01, "NA", "NA")))
    assert quick["wall_s"] == 0.01 and pd.isna(quick["cpu_s"]) and pd.isna(quick["max_rss_mb"])


@pytest.mark.parametrize("text", ["", "not\ta\tbenchmark\n1\t2\t3\n", HEADER, HEADER + "x\t0\t1\t1\t1\t1\t0\t0\t0\t1\n"])
def test_malformed_benchmark_file_is_one_clear_error(tmp_path, text):
    path = tmp_path / "search" / "x.tsv"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(UserError, match=r"x\.tsv"):
        jobs.collect_jobs(tmp_path, snakemake_log_dir=None)


def test_collect_jobs_times_from_the_snakemake_log(tmp_path, utc):
    workdir = tmp_path / "repo"
    bench_dir = workdir / "logs" / "benchmarks" / "default"
    asga = bench(bench_dir / "search/resnet20/w3a3/asga/digits-to-fashion-mnist-s0.tsv", row(29.6, "800.00", "29.10"))
    edmips = bench(bench_dir / "search/resnet20/w3a3/edmips/digits-to-fashion-mnist-s0.tsv", row(14.0, "700.00", "13.50"))
    agg = bench(bench_dir / "aggregate.tsv", row(2.4, "150.00", "2.20"))
    pre = bench(bench_dir / "pretrain_target/resnet20.tsv", row(361.0, "900.00", "360.00"))
    set_mtime(asga, "2026-11-29T09:00:30.750Z")   # written as the job ended (log: Finished at 09:00:31)
    set_mtime(edmips, "2026-11-29T09:00:16.000Z")  # its block never finished in the log -> file time
    set_mtime(agg, "2026-11-29T09:00:33.900Z")
    set_mtime(pre, "2026-11-29T08:50:00.000Z")     # not in any log -> file time
    log_dir = workdir / ".snakemake" / "log"
    log_dir.mkdir(parents=True)
    (log_dir / "2026-11-29T090000.000000.snakemake.log").write_text(LOG.format(workdir=workdir))

    frame = jobs.collect_jobs(bench_dir, snakemake_log_dir=log_dir)
    assert list(frame.columns) == jobs.JOB_COLUMNS
    assert list(zip(frame["rule"], frame["wildcards"])) == [
        ("aggregate", ""), ("pretrain_target", "resnet20"),
        ("search", "resnet20/w3a3/asga/digits-to-fashion-mnist-s0"),
        ("search", "resnet20/w3a3/edmips/digits-to-fashion-mnist-s0")]
    by = frame.set_index("wildcards")
    a = by.loc["resnet20/w3a3/asga/digits-to-fashion-mnist-s0"]
    assert a["time_source"] == "snakemake-log"
    assert a["start_utc"] == pd.Timestamp("2026-11-29T09:00:01Z") and a["end_utc"] == pd.Timestamp("2026-11-29T09:00:30.750Z")
    assert (a["wall_s"], a["cpu_s"], a["max_rss_mb"]) == (29.6, 29.1, 800.0)
    e = by.loc["resnet20/w3a3/edmips/digits-to-fashion-mnist-s0"]
    assert e["time_source"] == "mtime" and e["start_utc"] == pd.Timestamp("2026-11-29T09:00:02Z")  # 16.0 - 14.0
    p = by.loc["resnet20"]
    assert p["time_source"] == "mtime" and p["start_utc"] == pd.Timestamp("2026-11-29T08:43:59Z")  # 08:50:00 - 361 s
    assert by.loc[""]["start_utc"] == pd.Timestamp("2026-11-29T09:00:31Z")

    cost = jobs.suite_cost(frame)
    assert cost == {
        "job_time_s": 407.0,            # 29.6 + 14 + 2.4 + 361
        "cpu_time_s": 404.8,            # 29.1 + 13.5 + 2.2 + 360
        "cpu_time_missing": 0,
        "elapsed_s": 994.9,             # 08:43:59 -> 09:00:33.9
        "jobs": 4,
        "time_source": {"mtime": 2, "snakemake-log": 2},
        "per_rule": {"aggregate": {"jobs": 1, "total_s": 2.4, "mean_s": 2.4},
                     "pretrain_target": {"jobs": 1, "total_s": 361.0, "mean_s": 361.0},
                     "search": {"jobs": 2, "total_s": 43.6, "mean_s": 21.8}},
    }

    # a benchmark file rewritten long after the logged run (its own log gone) keeps its file time
    set_mtime(asga, "2026-11-30T12:00:00Z")
    later = jobs.collect_jobs(bench_dir, snakemake_log_dir=log_dir).set_index("wildcards")
    assert later.loc["resnet20/w3a3/asga/digits-to-fashion-mnist-s0"]["time_source"] == "mtime"
    # no log folder at all: every job by file time
    assert set(jobs.collect_jobs(bench_dir, snakemake_log_dir=tmp_path / "none")["time_source"]) == {"mtime"}


def test_older_finished_line_and_latest_log_wins(tmp_path, utc):
    bench_dir = tmp_path / "logs" / "benchmarks" / "s"
    f = bench(bench_dir / "figures.tsv", row(5.0, "100.00", "4.00"))
    set_mtime(f, "2026-11-29T10:00:05.5Z")
    log_dir = tmp_path / ".snakemake" / "log"
    log_dir.mkdir(parents=True)
    block = ("[{a}]\nrule figures:\n    jobid: 3\n    benchmark: logs/benchmarks/s/figures.tsv\n"
             "[{b}]\nFinished job 3.\n")
    (log_dir / "2026-11-29T090000.1.snakemake.log").write_text(block.format(a="Sun Nov 29 09:59:58 2026",
                                                                             b="Sun Nov 29 10:00:03 2026"))
    (log_dir / "2026-11-29T095959.1.snakemake.log").write_text(block.format(a="Sun Nov 29 10:00:00 2026",
                                                                             b="Sun Nov 29 10:00:05 2026"))
    got = jobs.collect_jobs(bench_dir, snakemake_log_dir=log_dir).iloc[0]
    assert got["time_source"] == "snakemake-log" and got["start_utc"] == pd.Timestamp("2026-11-29T10:00:00Z")
    # single-digit days are space-padded in the log (time.ctime style)
    assert jobs._local_to_utc("Mon Nov  9 09:00:02 2026") == pd.Timestamp("2026-11-09T09:00:02Z")


def test_jobs_tsv_is_deterministic_and_atomic(tmp_path):
    frame = pd.DataFrame({
        "rule": ["search", "aggregate"], "wildcards": ["a/b", ""], "wall_s": [29.6, 2.4],
        "cpu_s": [29.1, float("nan")], "max_rss_mb": [800.0, 150.25],
        "start_utc": pd.to_datetime(["2026-11-29T09:00:01Z", "2026-11-29T09:00:31Z"], utc=True),
        "end_utc": pd.to_datetime(["2026-11-29T09:00:30.75Z", "2026-11-29T09:00:33.9Z"], utc=True),
        "time_source": ["snakemake-log", "mtime"]})
    out = tmp_path / "results" / "jobs.tsv"
    jobs.write_jobs_tsv(frame, out)
    assert out.read_text() == (
        "rule\twildcards\twall_s\tcpu_s\tmax_rss_mb\tstart_utc\tend_utc\ttime_source\n"
        "aggregate\t\t2.40\tNA\t150.25\t2026-11-29T09:00:31.000Z\t2026-11-29T09:00:33.900Z\tmtime\n"
        "search\ta/b\t29.60\t29.10\t800.00\t2026-11-29T09:00:01.000Z\t2026-11-29T09:00:30.750Z\tsnakemake-log\n")
    first = out.read_bytes()
    jobs.write_jobs_tsv(frame.iloc[::-1], out)
    assert out.read_bytes() == first
    assert [p.name for p in out.parent.iterdir()] == ["jobs.tsv"]  # no temp file left behind
    assert jobs.suite_cost(frame)["cpu_time_missing"] == 1 and jobs.suite_cost(frame)["cpu_time_s"] == 29.1
    # read back: the same text and the same suite cost (committed results re-aggregate without the logs)
    back = jobs.read_jobs_tsv(out)
    assert jobs.jobs_tsv(back) == first.decode()
    assert jobs.suite_cost(back) == jobs.suite_cost(frame)
    assert jobs.suite_cost(frame)["elapsed_s"] == 32.9 and jobs.suite_cost(frame)["job_time_s"] == 32.0
    bad = tmp_path / "bad.tsv"
    bad.write_text("rule\twall_s\nsearch\tx\n")
    with pytest.raises(UserError, match="cannot read"):
        jobs.read_jobs_tsv(bad)


def test_empty_or_missing_benchmark_folder(tmp_path):
    frame = jobs.collect_jobs(tmp_path / "absent")
    assert frame.empty and list(frame.columns) == jobs.JOB_COLUMNS
    assert jobs.suite_cost(frame) == {"job_time_s": 0.0, "cpu_time_s": 0.0, "cpu_time_missing": 0, "elapsed_s": None,
                                      "jobs": 0, "time_source": {}, "per_rule": {}}
    assert jobs.jobs_tsv(frame) == "\t".join(jobs.JOB_COLUMNS) + "\n"


@pytest.mark.skipif(shutil.which("snakemake") is None and not (Path(sys.executable).parent / "snakemake").exists(),
                    reason="needs snakemake")
def test_a_real_snakemake_run_is_read_from_its_own_log(tmp_path):
    """Two tiny jobs and a collector through the installed Snakemake: every job is matched to its log block."""
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: "agg.txt"\n\n'
        'rule work:\n    output: "out/{x}/s{seed}.txt"\n    benchmark: "logs/benchmarks/toy/work/{x}/s{seed}.tsv"\n'
        '    shell: "sleep 1; echo {wildcards.x} > {output}"\n\n'
        'rule agg:\n    input: expand("out/{x}/s{seed}.txt", x=["a", "b"], seed=[0])\n    output: "agg.txt"\n'
        '    benchmark: "logs/benchmarks/toy/agg.tsv"\n    shell: "cat {input} > {output}"\n')
    exe = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    proc = subprocess.run([exe, "--cores", "2"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    frame = jobs.collect_jobs(tmp_path / "logs" / "benchmarks" / "toy",
                              snakemake_log_dir=tmp_path / ".snakemake" / "log")
    assert list(zip(frame["rule"], frame["wildcards"])) == [("agg", ""), ("work", "a/s0"), ("work", "b/s0")]
    assert set(frame["time_source"]) == {"snakemake-log"}
    work = frame[frame["rule"] == "work"]
    # Snakemake's benchmark clock starts after the job's shell is up: a `sleep 1` job may read ~0.8 s on a busy machine
    assert (work["wall_s"] > 0.5).all()
    assert (frame["end_utc"] >= frame["start_utc"]).all()
    cost = jobs.suite_cost(frame)
    assert cost["jobs"] == 3 and cost["per_rule"]["work"]["jobs"] == 2
    assert 1.0 <= cost["elapsed_s"] < cost["job_time_s"] + 5.0  # two 1 s jobs side by side, then the collector
