"""Kill the real workflow with SIGKILL (snakemake and every job it runs) and run it again: the results are the
ones of a run that was never killed.

* ``test_killed_search_resumes_through_snakemake``: a search killed after it checkpointed resumes from its
  checkpoint when snakemake runs again, and ends with the policy of an uninterrupted search.
* ``test_kill_any_job_at_any_moment_then_rerun_gives_identical_records``: a small suite derived from the smoke
  suite, killed at a random moment of its job phase (three seeded kill points), then re-run to completion, has the
  records (and policies, and files) of a clean run, up to the fields listed in ``VOLATILE_*``.

Both run the real CLI on CPU. Every run imports mpqbench from one frozen copy of the code made when the module
starts (:func:`faultkit.snapshot`), so the clean and the killed runs use the same code even when the checkout
changes meanwhile; in that copy (not a git checkout) the records' git fields read ``unknown``.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import faultkit as fk
from mpqbench.config import load_suite
from mpqbench.runs import Layout

pytest.importorskip("snakemake")
torch = pytest.importorskip("torch")

CORES = "2"


def _not_ready() -> str | None:
    """Why the real CLI cannot run these suites here, or None."""
    try:
        from mpqbench.data import dataset_status
        from mpqbench.search import list_methods
    except ImportError as exc:
        return f"mpqbench is not complete yet ({exc})"
    missing = {"asga", "gmpq"} - set(list_methods())
    if missing:
        return f"methods not registered: {', '.join(sorted(missing))}"
    absent = [d["name"] for d in dataset_status() if d["name"] in {"digits", "fashion-mnist"} and not d["present"]]
    if absent:
        return f"datasets missing: {', '.join(absent)}"
    return None


@pytest.fixture(scope="module")
def snap(tmp_path_factory) -> Path:
    reason = _not_ready()
    if reason:
        pytest.skip(reason)
    return fk.snapshot(tmp_path_factory.mktemp("code"))


def _layout(cwd: Path, suite_file: str) -> Layout:
    return Layout.of(load_suite(yaml.safe_load((cwd / suite_file).read_text())))


# ---- 1. a killed search resumes ---------------------------------------------------------------------------------
RESUME_CELL = dict(arch="resnet20", budget="w3a3", method="asga", proxy="digits", seed=0)
RESUME_EPOCHS = 16
# the last checkpoint (none is written after the final epoch): the search time carried over from the killed run
# (15 epochs) is then several times the resumed job's start-up (imports, data, model) plus its one remaining
# epoch, even when the load of a shared machine changes between the two runs
KILL_AFTER_EPOCH = RESUME_EPOCHS - 1


def _resume_suite(cwd: Path) -> str:
    return fk.derive_suite(cwd, "resume", {"asga": {"method": "asga"}},
                           {"epochs": RESUME_EPOCHS, "batch_size": 64})


def _checkpoint(state_dir: Path) -> tuple[Path, dict] | None:
    found = sorted(state_dir.glob("search-*.ckpt"))
    if not found:
        return None
    try:
        return found[0], torch.load(found[0], weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError):  # removed between glob and load
        return None


@pytest.mark.slow
def test_killed_search_resumes_through_snakemake(snap, tmp_path):
    env = fk.env_for(snap)
    killed, clean = fk.workdir(snap, tmp_path / "killed"), fk.workdir(snap, tmp_path / "clean")
    suite_file = _resume_suite(killed)
    assert _resume_suite(clean) == suite_file
    layout = _layout(killed, suite_file)
    policy = layout.path("policy", **RESUME_CELL)
    state_dir = killed / layout.path("search_state", **RESUME_CELL)
    search_log = killed / layout.log("search").format(**RESUME_CELL)
    bench = layout.benchmark("search").format(**RESUME_CELL)
    common = ("--cores", CORES, "--configfile", suite_file)

    # the search's only input: the data check (asga needs no teacher)
    fk.snakemake(killed, layout.path("data_check"), *common, env=env)

    last = {"mtime": None}

    def checkpointed() -> bool:
        found = sorted(state_dir.glob("search-*.ckpt"))
        if not found:
            return False
        try:
            mtime = found[0].stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime == last["mtime"]:
            return False
        last["mtime"] = mtime
        got = _checkpoint(state_dir)
        return got is not None and got[1]["epoch"] >= KILL_AFTER_EPOCH

    # run the search, SIGKILL snakemake and the search once it has checkpointed epoch KILL_AFTER_EPOCH
    proc = fk.start_snakemake(killed, policy, *common, env=env, output=tmp_path / "killed.out")
    t0 = time.monotonic()
    try:
        hit = fk.wait_for(checkpointed, proc, timeout=fk.TIMEOUT_S, what=f"the epoch-{KILL_AFTER_EPOCH} checkpoint")
    finally:
        fk.kill_group(proc)
    assert hit, (f"the search ended before its epoch-{KILL_AFTER_EPOCH} checkpoint:\n"
                 f"{(tmp_path / 'killed.out').read_text()[-3000:]}")
    kill_s = time.monotonic() - t0
    assert not (killed / policy).exists(), "the killed search wrote its policy"
    got = _checkpoint(state_dir)
    assert got is not None, "the killed search left no checkpoint"
    ckpt, state = got
    print(f"\n[resume] killed {kill_s:.1f} s after start, checkpoint {ckpt.name}: epoch {state['epoch']} of "
          f"{RESUME_EPOCHS}, step {state['step']}, {state['meter']['wall_s']:.1f} s of search time")

    # run it again: it resumes from the checkpoint and removes it at the end
    fk.snakemake(killed, "--unlock", "--configfile", suite_file, env=env)
    assert ckpt.exists(), "unlocking removed the checkpoint"
    t1 = time.monotonic()
    fk.snakemake(killed, policy, *common, "--rerun-incomplete", env=env)
    rerun_s = time.monotonic() - t1
    log = search_log.read_text()
    assert "clean" not in log and "warning" not in log.lower(), f"the resumed search started over:\n{log}"
    assert not list(state_dir.glob("search-*.ckpt")), "a finished search leaves no checkpoint"
    assert not list(state_dir.glob(".search-*.tmp")), "a finished search leaves no temp file"

    # the same cell, never killed
    t2 = time.monotonic()
    fk.snakemake(clean, policy, *common, env=env)
    clean_s = time.monotonic() - t2
    resumed, ref = json.loads((killed / policy).read_text()), json.loads((clean / policy).read_text())
    assert resumed["layers"] == ref["layers"]
    assert resumed["search"]["steps"] == ref["search"]["steps"]
    assert resumed["search"]["macs_processed"] == ref["search"]["macs_processed"]
    assert resumed["achieved"] == ref["achieved"]
    assert resumed["provenance"]["search_extra"]["probs"] == ref["provenance"]["search_extra"]["probs"]
    # and everything else too (the periodic history across the kill included), but the wall times and dates
    assert fk.json_differences(resumed, ref, VOLATILE_POLICY) == []

    # it resumed: the policy counts the killed part's search time, more than the whole resumed job ran. A search
    # that started over cannot measure more than its own process lived (the clean one shows it); snakemake's
    # benchmark of the job (its wall time `s`) covers the whole process.
    b_resumed, b_clean = fk.benchmark(killed / bench), fk.benchmark(clean / bench)
    print(f"[resume] resumed job {b_resumed['s']:.1f} s, its policy's search time {resumed['search']['wall_s']:.1f} s; "
          f"clean job {b_clean['s']:.1f} s, its policy's search time {ref['search']['wall_s']:.1f} s; "
          f"rerun {rerun_s:.0f} s, clean run {clean_s:.0f} s")
    assert ref["search"]["wall_s"] < b_clean["s"]
    assert resumed["search"]["wall_s"] > b_resumed["s"], "the resumed search did not carry the killed part's time"


# ---- 2. kill any job at any moment ------------------------------------------------------------------------------
FAULT_SUITE = "fault"
# asga: a differentiable search (the proposed method); gmpq: a search with a proxy teacher (pretrain_proxy). With
# them the suite has every rule: check_data, both pretrains, search, finetune, evaluate, aggregate, figures.
FAULT_METHODS = ["asga", "gmpq"]
# What legitimately differs between two clean runs of the same suite (checked by diffing two clean runs): when a
# file was made and how long a step took. Everything else of a record (and of a policy) must be identical.
VOLATILE_RECORD = frozenset({
    "created_utc",  # when evaluate wrote the record
    "provenance.policy_created_utc",  # when the search wrote the policy
    "search.wall_s", "search.teacher_wall_s", "finetune.wall_s",  # measured durations
})
VOLATILE_POLICY = frozenset({"provenance.created_utc", "search.wall_s", "search.teacher_wall_s"})


@dataclass
class CleanRun:
    cwd: Path
    suite_file: str
    layout: Layout
    records: dict[str, dict]
    policies: dict[str, dict]
    files: list[str]
    n_jobs: int  # jobs with a log (every job but `all`)
    wall_s: float


def _outputs(cwd: Path, layout: Layout) -> tuple[dict, dict, list[str]]:
    return (fk.json_files(cwd / layout.runs_dir), fk.json_files(cwd / layout.work / "policies"),
            fk.files_under(cwd / layout.work_dir))


@pytest.fixture(scope="module")
def clean_fault_run(snap, tmp_path_factory) -> CleanRun:
    cwd = fk.workdir(snap, tmp_path_factory.mktemp("fault-clean"))
    suite_file = fk.derive_suite(cwd, FAULT_SUITE, fk.smoke_methods(FAULT_METHODS, cwd),
                                 {"epochs": 1, "batch_size": 128})
    layout = _layout(cwd, suite_file)
    t0 = time.monotonic()
    fk.snakemake(cwd, "all", "--cores", CORES, "--configfile", suite_file, env=fk.env_for(snap))
    wall_s = time.monotonic() - t0
    records, policies, files = _outputs(cwd, layout)
    assert len(records) == len(FAULT_METHODS) and len(policies) == len(FAULT_METHODS)
    n_jobs = len(fk.job_logs(cwd, FAULT_SUITE))
    print(f"\n[fault] clean run: {n_jobs} jobs in {wall_s:.0f} s")
    return CleanRun(cwd, suite_file, layout, records, policies, files, n_jobs, wall_s)


def kill_point(phase: str, kill_seed: int, n_jobs: int) -> tuple[int, float]:
    """(n, delay): kill ``delay`` s (0-3) after the n-th job started, n random in the phase's third of the jobs in
    start order (for the 11 jobs of the fault suite: early = data check, pretrains, a search; middle = searches,
    fine-tunes; late = evaluations, aggregate, figures)."""
    third = {"early": 0, "middle": 1, "late": 2}[phase]
    lo, hi = math.ceil(n_jobs * third / 3) + 1, math.ceil(n_jobs * (third + 1) / 3)
    rng = random.Random(kill_seed)
    return rng.randint(lo, hi), rng.uniform(0.0, 3.0)


@pytest.mark.slow
@pytest.mark.parametrize("phase,kill_seed", [("early", 1), ("middle", 2), ("late", 3)])
def test_kill_any_job_at_any_moment_then_rerun_gives_identical_records(snap, clean_fault_run, tmp_path, phase,
                                                                         kill_seed):
    a = clean_fault_run
    env = fk.env_for(snap)
    cwd = fk.workdir(snap, tmp_path / "killed")
    (cwd / a.suite_file).write_text((a.cwd / a.suite_file).read_text())
    args = ("all", "--cores", CORES, "--configfile", a.suite_file)

    # kill point: once the n-th job has started (its log appeared), a random 0-3 s later
    nth, delay = kill_point(phase, kill_seed, a.n_jobs)
    out = tmp_path / "killed.out"
    proc = fk.start_snakemake(cwd, *args, env=env, output=out)
    t0 = time.monotonic()
    seen: list[str] = []

    def nth_started() -> bool:
        for log in fk.job_logs(cwd, FAULT_SUITE):
            name = str(log.relative_to(cwd / "logs" / FAULT_SUITE).with_suffix(""))
            if name not in seen:
                seen.append(name)
        return len(seen) >= nth

    try:
        if fk.wait_for(nth_started, proc, timeout=fk.TIMEOUT_S, what=f"job #{nth}"):
            time.sleep(delay)
        finished_before_kill = proc.poll() is not None
    finally:
        fk.kill_group(proc)
    kill_s = time.monotonic() - t0
    output = out.read_text()
    running = fk.running_jobs(output, FAULT_SUITE)
    n_done = output.count("Finished jobid:")
    point = (f"{phase}, seed {kill_seed}: job #{nth} of {a.n_jobs} ({seen[nth - 1] if len(seen) >= nth else '-'}) + "
             f"{delay:.2f} s -> SIGKILL at {kill_s:.1f} s, {n_done} jobs finished, running: {running or 'none'}"
             + (" (the workflow had already ended: nothing was killed)" if finished_before_kill else ""))
    print(f"\n[fault] kill point {point}")

    fk.snakemake(cwd, "--unlock", "--configfile", a.suite_file, env=env)
    t1 = time.monotonic()
    fk.snakemake(cwd, *args, "--rerun-incomplete", env=env)
    rerun_s = time.monotonic() - t1
    print(f"[fault] rerun to completion: {rerun_s:.0f} s (clean run: {a.wall_s:.0f} s)")

    records, policies, files = _outputs(cwd, a.layout)
    problems = []
    if sorted(records) != sorted(a.records):
        problems.append(f"records: {sorted(records)} != {sorted(a.records)}")
    for name in sorted(set(records) & set(a.records)):
        problems += [f"record {name}: {d}"
                     for d in fk.json_differences(records[name], a.records[name], VOLATILE_RECORD)]
    for name in sorted(set(policies) & set(a.policies)):
        problems += [f"policy {name}: {d}"
                     for d in fk.json_differences(policies[name], a.policies[name], VOLATILE_POLICY)]
    if files != a.files:  # no leftover temp file, checkpoint or resume state
        problems.append(f"files under {a.layout.work_dir}/: extra {sorted(set(files) - set(a.files))}, "
                        f"missing {sorted(set(a.files) - set(files))}")
    assert not problems, f"after the kill at {point}:\n" + "\n".join(problems[:60])

    proc2 = fk.snakemake(cwd, *args, "-n", env=env)
    assert "Nothing to be done" in proc2.stdout + proc2.stderr
