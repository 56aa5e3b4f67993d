"""The cluster path: the workflow under ``--profile profiles/slurm`` on a real (single-node) SLURM.

``test_smoke_suite_runs_on_a_real_slurm`` (slow) starts SLURM on this machine (tests/slurmkit.py: munge,
MariaDB + slurmdbd, slurmctld, slurmd; Debian's packages, installed with apt-get as root), runs a reduced
smoke suite through snakemake-executor-plugin-slurm and checks that

- every non-local job went through ``sbatch``: ``sacct`` has one allocation per job, named by the run's
  SLURM run ID, with the rule in its comment and the resources the suite asks for (CPUs = threads,
  memory = mem_mb, time limit = runtime), the profile's partitions and the account given on the command line;
  each ran the submitting environment's Snakemake (sbatch --export=ALL);
- the local rules (check_data, aggregate, figures) did not;
- the run records equal those of a local run of the same suite (``--cores 2``), except for the fields that
  say when a job ran and how long it took (``VOLATILE``);
- a job that fails (a bad policy put in place of one cell's search output) is reported as failed by
  Snakemake, once per attempt, with its SLURM job ID and SLURM log path (the log exists; Snakemake prints the
  rule's log with the CLI's error), and ``sacct`` shows it FAILED in the partition a ``--set-resources``
  override chose.

``test_site_overrides_replace_the_profiles_account_and_partitions`` (slow, dry runs) checks the ways
config/README.md gives to set the account and partitions per site.

Both skip (never fail) without the plugin; the first also without root, without apt-get where packages are
missing, on a machine with its own /etc/slurm/slurm.conf, or without the smoke suite's CLI and datasets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import slurmkit

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "profiles"]
SUITE_FILE = "config/slurm-test.yaml"
ACCOUNT = "mpqtest"
PARTITIONS = ("cpu", "gpu")  # the names profiles/slurm uses: cpu (default), gpu (pretrain/search/finetune/evaluate)
LOCAL_RULES = {"check_data", "aggregate", "figures", "all"}
# distinct per rule, so that a request that reaches the wrong job shows
RESOURCES = {
    "check_data": {"threads": 1, "mem_mb": 1000, "runtime": 5},
    "pretrain_target": {"threads": 1, "mem_mb": 2400, "runtime": 6},
    "pretrain_proxy": {"threads": 2, "mem_mb": 2300, "runtime": 7},
    "search": {"threads": 1, "mem_mb": 2200, "runtime": 8},
    "finetune": {"threads": 1, "mem_mb": 2100, "runtime": 9},
    "evaluate": {"threads": 1, "mem_mb": 2000, "runtime": 10},
    "aggregate": {"threads": 1, "mem_mb": 2000, "runtime": 5},
    "figures": {"threads": 1, "mem_mb": 2000, "runtime": 5},
}
# Record fields that differ between a SLURM run and a local run of the same suite by design (found by
# diffing the two): when the record and the policy were written, and how long each stage took. Everything
# else (policies, metrics, costs, provenance, env incl. threads and the hostname hash, git) must be equal.
# On a multi-node cluster env.hostname_hash would differ too; on this single node it does not.
VOLATILE = {
    ("created_utc",),
    ("provenance", "policy_created_utc"),
    ("search", "wall_s"),
    ("search", "teacher_wall_s"),
    ("finetune", "wall_s"),
}
# the checkout's commit when a job ran: differs only if someone commits while the test runs (then ignored)
GIT = {("git", "commit"), ("git", "dirty"), ("provenance", "policy_git_commit")}
CELL = "resnet20_w3a3_uniform_digits_0"  # the cell whose fine-tune is made to fail
SACCT_FIELDS = ["JobIDRaw", "JobName", "Comment", "State", "ExitCode", "Partition", "Account", "ReqCPUS",
                "ReqMem", "Timelimit", "NNodes", "NodeList", "WorkDir", "Elapsed"]


# ---- helpers ---------------------------------------------------------------------------------------------
def copy_tree(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def reduced_suite() -> dict:
    """The smoke suite with two methods on digits, a control and a search with a proxy teacher (uniform,
    gmpq): every rule of the DAG, 8 cluster jobs and 3 local ones (each cluster job costs two Snakemake
    start-ups, in the batch step and in the srun step, so every method more adds about a minute on 2 cores)."""
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    cfg["methods"] = {"uniform": {"method": "uniform"}, "gmpq": {"method": "gmpq"}}
    cfg["resources"] = RESOURCES
    return cfg


def snakemake_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", *args]


def run_env(base: dict | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the venv's mpqbench, for the jobs too
    env.update(MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return env


def expected_jobs(cfg) -> dict[str, int]:
    from mpqbench.plugins import resolve_suite

    cfg = resolve_suite(cfg)
    n = len(cfg.runs())
    return {"pretrain_target": len(cfg.archs), "pretrain_proxy": len(cfg.teachers()), "search": n,
            "finetune": n, "evaluate": n}


def minutes(runtime: int) -> str:
    return f"{runtime // 60:02d}:{runtime % 60:02d}:00"


def strip(record: dict, volatile=VOLATILE) -> dict:
    record = json.loads(json.dumps(record))
    for path in volatile:
        node = record
        for key in path[:-1]:
            node = node.get(key) or {}
        node.pop(path[-1], None)
    return record


def diff(a, b, path=()) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += diff(a.get(key, "<missing>"), b.get(key, "<missing>"), (*path, key))
        return out
    return [] if a == b else [f"{'.'.join(map(str, path))}: {a!r} != {b!r}"]


def records(tree: Path) -> dict[str, dict]:
    runs = tree / "work" / "smoke" / "results" / "runs"
    return {str(p.relative_to(runs)): json.loads(p.read_text()) for p in sorted(runs.rglob("*.json"))}


def real_cli_ready() -> str | None:
    try:
        from mpqbench.data import dataset_status
        from mpqbench.search import list_methods
    except ImportError as exc:
        return f"mpqbench is not complete yet ({exc})"
    missing = {"uniform", "gmpq"} - set(list_methods())
    if missing:
        return f"methods not registered: {', '.join(sorted(missing))}"
    absent = [d["name"] for d in dataset_status() if d["name"] in {"digits", "fashion-mnist"} and not d["present"]]
    return f"datasets missing: {', '.join(absent)}" if absent else None


# ---- the profile's override semantics (dry runs) --------------------------------------------------------
def _dry_resources(tmp: Path, *extra: str) -> dict[str, str]:
    """Rule -> the resources line of a dry run of the test suite under profiles/slurm (+ ``extra``)."""
    proc = subprocess.run(snakemake_cmd("all", "-n", "--profile", "profiles/slurm", "--configfile", SUITE_FILE,
                                        *extra), cwd=tmp, env=run_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {rule: re.search(rf"rule {rule}:.*?resources: ([^\n]*)", proc.stdout, re.S).group(1)
            for rule in ("pretrain_target", "pretrain_proxy", "search", "finetune", "evaluate")}


@pytest.mark.slow  # two dry runs: ~25 s on an idle 2-core machine, 45 s on a busy one
def test_site_overrides_replace_the_profiles_account_and_partitions(tmp_path):
    """What config/README.md says about adapting profiles/slurm to a site holds: on the command line,
    ``--default-resources`` replaces the profile's account and default partition and ``--set-resources``
    replaces the profile's whole per-rule block (a GPU rule not named there falls back to the default
    partition); a second ``--profile`` replaces the first one's top-level keys it sets."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    copy_tree(tmp_path)
    (tmp_path / SUITE_FILE).write_text(yaml.safe_dump(reduced_suite(), sort_keys=False))

    cli = _dry_resources(tmp_path, "--default-resources", "slurm_account=proj42", "slurm_partition=short",
                         "--set-resources", "search:slurm_partition=a100")
    assert all("slurm_account=proj42" in r for r in cli.values()), cli
    assert "slurm_partition=a100" in cli["search"] and "slurm_partition=short" in cli["finetune"], cli

    site = tmp_path / "site"
    site.mkdir()
    (site / "config.yaml").write_text(yaml.safe_dump({
        "default-resources": {"slurm_account": "proj42", "slurm_partition": "short"},
        "set-resources": {rule: {"slurm_partition": "v100"} for rule in cli}}))
    stacked = _dry_resources(tmp_path, "--profile", str(site))
    assert all("slurm_partition=v100" in r and "slurm_account=proj42" in r for r in stacked.values()), stacked
    # the suite's requests are untouched by a site profile
    assert all(f"mem_mb={RESOURCES[rule]['mem_mb']}" in r and f"runtime={RESOURCES[rule]['runtime']}" in r
               for rule, r in stacked.items()), stacked


# ---- the real thing --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smoke_suite_runs_on_a_real_slurm(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    reason = real_cli_ready() or slurmkit.install()
    if reason:
        pytest.skip(reason)
    from mpqbench.config import load_suite
    from mpqbench.records import git_info

    git_before = git_info()
    cfg_dict = reduced_suite()
    cfg = load_suite(cfg_dict)
    local, cluster_tree = copy_tree(tmp_path / "local"), copy_tree(tmp_path / "slurm")
    for tree in (local, cluster_tree):
        (tree / SUITE_FILE).write_text(yaml.safe_dump(cfg_dict, sort_keys=False))

    # the local run of the same suite (up to the records), meanwhile
    t_local = time.perf_counter()
    local_log = open(tmp_path / "local.log", "w")
    local_proc = subprocess.Popen(snakemake_cmd("all", "--until", "evaluate", "--cores", "2", "--configfile",
                                                SUITE_FILE), cwd=local,
                                  env=run_env(), stdout=local_log, stderr=subprocess.STDOUT)
    try:
        t_start = time.perf_counter()
        with slurmkit.Cluster(partitions=PARTITIONS, account=ACCOUNT) as cluster:
            wall_start = time.perf_counter() - t_start
            env = cluster.env(run_env())
            base = ["all", "--profile", "profiles/slurm", "--configfile", SUITE_FILE,
                    # per-site settings the way config/README.md documents them
                    "--default-resources", f"slurm_account={ACCOUNT}", "slurm_partition=cpu",
                    # a test cluster answers at once: poll every few seconds, not after 40 s
                    "--slurm-init-seconds-before-status-checks", "3", "--slurm-keep-successful-logs"]
            t0 = time.perf_counter()
            proc = subprocess.run(snakemake_cmd(*base), cwd=cluster_tree, env=env, capture_output=True, text=True,
                                  timeout=1800)
            wall_slurm = time.perf_counter() - t0
            out = proc.stdout + proc.stderr
            (tmp_path / "slurm.log").write_text(out)
            assert proc.returncode == 0, out[-6000:] + cluster.logs()
            run_uuid = re.search(r"SLURM run ID: (\S+)", out).group(1)

            # every cluster job went through sbatch, with the suite's resources
            jobs = cluster.sacct(SACCT_FIELDS)
            table = "\n".join("|".join(j[f] for f in SACCT_FIELDS) for j in jobs)
            (tmp_path / "sacct.txt").write_text("|".join(SACCT_FIELDS) + "\n" + table + "\n")
            submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", out))
            assert {j["JobIDRaw"] for j in jobs} == set(submitted.values()), (table, submitted)
            per_rule: dict[str, int] = {}
            for job in jobs:
                rule = re.match(r"rule_([a-z_]+?)(?:_wildcards_|$)", job["Comment"]).group(1)
                per_rule[rule] = per_rule.get(rule, 0) + 1
                res = RESOURCES[rule]
                assert (job["JobName"], job["State"], job["ExitCode"]) == (run_uuid, "COMPLETED", "0:0"), job
                assert (job["ReqCPUS"], job["ReqMem"], job["Timelimit"]) == (
                    str(res["threads"]), f"{res['mem_mb']}M", minutes(res["runtime"])), job
                assert (job["Partition"], job["Account"], job["NNodes"]) == ("gpu", ACCOUNT, "1"), job
                assert Path(job["WorkDir"]) == cluster_tree, job
            assert per_rule == expected_jobs(cfg), per_rule
            assert not LOCAL_RULES & set(per_rule)
            # each job's SLURM log (kept): the job ran the venv's snakemake and its mpqbench command
            logs = sorted((cluster_tree / ".snakemake" / "slurm_logs").rglob("*.log"))
            assert {p.stem for p in logs} == set(submitted.values())
            search_log = next(p for p in logs if p.parent.parent.name == "rule_search").read_text()
            assert "mpqbench search " in search_log and "1 of 1 steps (100%) done" in search_log, search_log[-3000:]
            # ... with the submitting environment (sbatch --export=ALL): the venv's snakemake, hence its mpqbench
            import snakemake

            assert f"Command: {Path(snakemake.__file__).parent}" in search_log, search_log[:3000]

            # the records equal those of the local run
            assert local_proc.wait(timeout=1800) == 0, (tmp_path / "local.log").read_text()[-6000:]
            wall_local = time.perf_counter() - t_local
            ours, theirs = records(cluster_tree), records(local)
            assert len(ours) == len(cfg.runs()) and set(ours) == set(theirs)
            raw = {name: diff(theirs[name], ours[name]) for name in ours}
            differing = sorted({d.split(":")[0] for lines in raw.values() for d in lines})
            volatile = VOLATILE | (GIT if git_info() != git_before else set())
            for name in ours:
                a, b = strip(theirs[name], volatile), strip(ours[name], volatile)
                assert a == b, diff(a, b)
                assert ours[name]["status"] == "ok"

            # a failing job: a bad policy in place of one cell's search output; its fine-tune fails on the cluster
            policy = next((cluster_tree / "work" / "smoke" / "policies").rglob("uniform/digits-to-*.json"))
            bad = json.loads(policy.read_text())
            first = next(iter(bad["layers"]))
            bad["layers"][first] = {"w": 99, "a": 3}
            policy.write_text(json.dumps(bad))
            t0 = time.perf_counter()
            proc = subprocess.run(snakemake_cmd(*base, "--set-resources", "finetune:slurm_partition=cpu"),
                                  cwd=cluster_tree, env=env, capture_output=True, text=True, timeout=1800)
            wall_fail = time.perf_counter() - t0
            out = proc.stdout + proc.stderr
            (tmp_path / "slurm-fail.log").write_text(out)
            assert proc.returncode != 0, out[-6000:]
            # reported per attempt (the profile retries once): the SLURM job ID, its state and its SLURM log ...
            failed = re.findall(r"Error in rule finetune:\n    message: SLURM-job '(\d+)' failed, SLURM status is: "
                                r"'FAILED'", out)
            assert len(failed) == 2, out[-6000:]
            for jobid in failed:
                log = re.search(rf"    log: [^\n]*?, (\S*/slurm_logs/rule_finetune/{CELL}/{jobid}\.log) ", out)
                assert log, out[-6000:]
                assert "Error in rule finetune" in Path(log.group(1)).read_text()  # the job's own Snakemake
            # ... and the rule's log, with the CLI's one-line error (show-failed-logs)
            assert f"is malformed at 'layers.{first}.w': Input should be less than or equal to 32" in out, out[-6000:]
            after = {j["JobIDRaw"]: j for j in cluster.sacct(SACCT_FIELDS)}
            for jobid in failed:
                job = after[jobid]
                assert job["State"] == "FAILED" and job["ExitCode"] != "0:0", job
                assert job["Comment"] == f"rule_finetune_wildcards_{CELL}", job
                assert job["Partition"] == "cpu", job  # the --set-resources override
            fail_lines = "\n".join("|".join(after[i][f] for f in SACCT_FIELDS) for i in failed)
    finally:
        if local_proc.poll() is None:
            local_proc.kill()
        local_log.close()
    print(f"\nSLURM {slurmkit.slurm_version()}, node {cluster.hardware}: started in {wall_start:.0f} s; "
          f"{len(jobs)} sbatch jobs, suite {wall_slurm:.0f} s under SLURM, {wall_local:.0f} s local (at the same "
          f"time); the failing re-run {wall_fail:.0f} s")
    print("|".join(SACCT_FIELDS) + "\n" + table)
    print(f"fields that differ between the SLURM and the local records (ignored): {differing}")
    print(f"failed job(s):\n{fail_lines}")
