"""The Snakemake workflow and the DVC pipeline around it.

Most tests run the real workflow in a temporary copy of the repository with a stub ``mpqbench`` on
PATH that writes the declared outputs instantly, so they check the DAG mechanics (what runs, what
re-runs, what DVC does) in seconds. ``test_smoke_suite_really_runs`` runs the real CLI on the smoke
suite; it is marked slow and runs once the CLI and every method of config/smoke.yaml exist.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mpqbench.config import load_suite

ROOT = Path(__file__).resolve().parents[1]
SUITES = {"default": "config/config.yaml", "smoke": "config/smoke.yaml", "paper": "config/paper.yaml",
          "extended": "config/extended.yaml"}
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "profiles"]
BIN = Path(sys.executable).parent

pytest.importorskip("snakemake")

STUB = r'''#!{python}
"""Stub `mpqbench` for workflow tests: logs the call, writes the declared outputs, nothing else."""
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
cmd = args[0]
with open(os.environ["STUB_CALLS"], "a") as f:
    f.write(json.dumps(args) + "\n")


def opt(name):
    return args[args.index(name) + 1]


if cmd == "info":
    missing = set(os.environ.get("STUB_MISSING", "").split(","))
    names = ["digits", "fashion-mnist", "cifar10", "flowers102", "food101", "imagenet"]
    print(json.dumps({{"datasets": [
        {{"name": n, "present": n not in missing, "where": None if n in missing else "/stub/" + n,
          "how_to_get": "apt-get install -y dataset-" + n}} for n in names]}}))
elif cmd == "aggregate":
    if os.environ.get("STUB_FAIL") == "aggregate":
        sys.exit("error: stub aggregate fails on purpose")
    runs, out = Path(opt("--runs")), Path(opt("--out-dir"))
    records = sorted(str(p.relative_to(runs)) for p in runs.rglob("*.json"))
    out.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{{r}},{{i}},{{90 + i / 100}},{{1e9 * (i + 1)}}\n" for i, r in enumerate(records))
    (out / "leaderboard.csv").write_text("record,bitops_g_all,top1_pct,search_macs_processed\n" + rows)
    (out / "summary.json").write_text(json.dumps({{"records": len(records)}}))
    (out / "jobs.tsv").write_text("rule\twildcards\n")
elif cmd == "export":
    from mpqbench.runs import AGGREGATE_FILES, EXPORT_FILES

    out = Path(opt("--results"))
    records = sorted(str(p.relative_to(out)) for p in (out / "runs").rglob("*.json"))
    for kind in EXPORT_FILES:
        (out / AGGREGATE_FILES[kind]).write_text("stub export\n")
    (out / AGGREGATE_FILES["metrics"]).write_text(json.dumps({{"records": len(records)}}))
elif cmd == "figures":
    out = Path(opt("--out-dir"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "pareto.png").write_bytes(b"\x89PNG stub")
else:
    out = Path(opt("--out"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({{"stub": cmd, "argv": args}}))
    if cmd == "pretrain":
        Path(str(out) + ".json").write_text("{{}}")
'''


# ---- helpers ---------------------------------------------------------------------------------------------
def copy_tree(dest: Path, extra: tuple[str, ...] = ()) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*WORKFLOW_FILES, *extra):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def stub_env(tmp: Path, **extra: str) -> dict[str, str]:
    stub_dir = tmp / "stub-bin"
    stub_dir.mkdir(exist_ok=True)
    stub = stub_dir / "mpqbench"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{stub_dir}{os.pathsep}{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               STUB_CALLS=str(tmp / "calls.jsonl"), DVC_NO_ANALYTICS="1", **extra)
    return env


def calls(tmp: Path) -> list[list[str]]:
    path = tmp / "calls.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    path.unlink()
    return [json.loads(line) for line in lines]


def snakemake(cwd: Path, *args: str, env: dict | None = None, check: bool = True,
              timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env or os.environ.copy(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run: rule -> number of jobs."""
    match = re.search(r"Job stats:\njob\s+count\n[- ]+\n(.*?)\ntotal\s+\d+", output, re.S)
    if not match:
        return {}
    return {rule: int(n) for rule, n in (line.split() for line in match.group(1).splitlines())}


def expected_counts(suite_file: Path) -> dict[str, int]:
    from mpqbench.plugins import resolve_suite

    cfg = resolve_suite(load_suite(yaml.safe_load(suite_file.read_text())))
    n = len(cfg.runs())
    return {"check_data": 1, "pretrain_target": len(cfg.archs), "pretrain_proxy": len(cfg.teachers()),
            "search": n, "finetune": n, "evaluate": n, "aggregate": 1, "figures": 1, "all": 1}


def run_dvc(cwd: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    dvc = shutil.which("dvc", path=env["PATH"])
    if dvc is None:
        pytest.skip("dvc is not installed (pip install 'mpqbench[workflow]')")
    proc = subprocess.run([dvc, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


# ---- DAG shape -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_dry_runs(suite, tmp_path):
    copy_tree(tmp_path)
    proc = snakemake(tmp_path, "all", "-n", "--configfile", SUITES[suite])
    assert job_counts(proc.stdout) == expected_counts(tmp_path / SUITES[suite])


def test_default_suite_is_the_default_configfile(tmp_path):
    copy_tree(tmp_path)
    proc = snakemake(tmp_path, "-n", "-p")
    assert job_counts(proc.stdout) == expected_counts(tmp_path / SUITES["default"])
    out = proc.stdout
    searches = {(c["label"], c["budget"], c["proxy-label"], c["seed"]): c for c in parsed_commands(out, "search")}
    # the CLI contract: label -> base method + hparams, proxy label -> dataset + subset, teacher where needed
    sam = searches[("asga-sam", "w3a3", "digits", "0")]
    assert sam["method"] == "asga" and {"adaptive_rho=false", "align=false"} <= set(sam["hp"])
    curve = searches[("edmips-target-len0.25", "w3a3", "fashion-mnist", "0")]
    assert (curve["method"], curve["arch"], curve["proxy"], curve["proxy-subset"], curve["epochs"],
            curve["budget-floor"], curve["length"], curve["curve"]) == (
        "edmips-target", "resnet20", "fashion-mnist", "6000", "0.5", "0.9", "0.25", "edmips-target")
    # hawq-target reads the target FP start model as its "teacher"; the search gets the suite's precision
    hawq_t = searches[("hawq-target", "w3a3", "fashion-mnist", "0")]
    assert hawq_t["teacher"] == "work/default/fp/resnet20-fashion-mnist.pt" and hawq_t["precision"] == "fp32"
    assert searches[("gmpq", "w3a3", "digits", "0")]["teacher"] == "work/default/teacher/resnet20-digits.pt"
    assert "teacher" not in searches[("edmips", "w3a3", "digits", "0")]
    # every search checkpoints into its own cell's state folder, so a killed search resumes (and only its own)
    assert searches[("asga", "w3a3", "digits", "1")]["work-dir"] == \
        "work/default/search-state/resnet20/w3a3/asga/digits-to-fashion-mnist-s1"
    assert len({c["work-dir"] for c in searches.values()}) == len(searches)
    assert "--out results/runs/default/resnet20/w2.5a2.5/edmips-target/fashion-mnist-to-fashion-mnist-s0.json" in out


def parsed_commands(out: str, command: str) -> list[dict]:
    """The ``mpqbench <command>`` lines of a dry run (-p) as {option: value} (repeated --hp as a list)."""
    found = []
    for line in out.splitlines():
        line = line.strip().removeprefix("Shell command: ")
        if not line.startswith(f"mpqbench {command} "):
            continue
        words = shlex.split(line.split(" > ")[0])[2:]
        opts: dict = {"hp": []}
        i = 0
        while i < len(words):
            key = words[i].removeprefix("--")
            if i + 1 < len(words) and not words[i + 1].startswith("--"):
                if key == "hp":
                    opts["hp"].append(words[i + 1])
                else:
                    opts[key] = words[i + 1]
                i += 2
            else:
                opts[key] = True
                i += 1
        found.append(opts)
    return found


def test_paper_suite_names_no_scheduler_and_uses_gpus(tmp_path):
    copy_tree(tmp_path)
    proc = snakemake(tmp_path, "all", "-n", "-p", "--configfile", SUITES["paper"])
    assert re.search(r"rule search:.*?resources: [^\n]*gpu=1", proc.stdout, re.S)
    assert "--w-candidates 1,2,3,4" in proc.stdout  # ResNet-50's GMPQ candidate set
    assert "--weights data/weights/resnet18-f37072fd.pth" in proc.stdout
    text = "\n".join(p.read_text() for p in [ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")])
    assert not re.search(r"slurm|sbatch|executor", text, re.I)


def test_slurm_profile_dry_runs_the_paper_suite(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    copy_tree(tmp_path)
    proc = snakemake(tmp_path, "all", "-n", "--profile", "profiles/slurm", "--configfile", SUITES["paper"])
    search = re.search(r"rule search:.*?resources: ([^\n]*)", proc.stdout, re.S).group(1)
    assert "slurm_partition=gpu" in search and "gpu=1" in search
    aggregate = re.search(r"rule aggregate:.*?resources: ([^\n]*)", proc.stdout, re.S).group(1)
    assert "gpu=0" in aggregate


def test_lint_leaves_only_the_justified_warning(tmp_path):
    """The one remaining lint (no conda env/container per rule) is justified in config/README.md."""
    copy_tree(tmp_path)
    proc = snakemake(tmp_path, "--lint", check=False)
    titles = set(re.findall(r"^    \* (.+?):?$", proc.stdout + proc.stderr, re.M))
    assert titles == {"Specify a conda environment or container for each rule."}, proc.stdout + proc.stderr
    assert "conda environment or container" in (ROOT / "config" / "README.md").read_text()


def test_malformed_config_fails_with_a_clear_message(tmp_path):
    copy_tree(tmp_path)
    cfg = yaml.safe_load((tmp_path / SUITES["smoke"]).read_text())
    cfg["methods"]["asga"]["proxies"] = ["cifar"]
    cfg["finetune"]["epocs"] = 1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "all", "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "bad.yaml is malformed:" in err
    assert "finetune.epocs: unknown key (typo?)" in err


BAD_SUITES = {
    "unregistered method": (lambda c: c["methods"].update(x={"method": "uniformm"}),
                            "methods.x.method: unknown method 'uniformm'"),
    "unknown hparam": (lambda c: c["methods"]["asga"].setdefault("hparams", {}).update(adaptive_rhoo=False),
                       "methods.asga.hparams.adaptive_rhoo"),
    "teacher contradicts": (lambda c: c["methods"]["gmpq"].update(teacher=False),
                            "methods.gmpq.teacher: False contradicts gmpq"),
    "infeasible w1a1": (lambda c: c.update(budgets=["w3a3", "w1a1"]), "budgets: w1a1 is below the cheapest policy"),
    "infeasible w0a0": (lambda c: c.update(budgets=["w3a3", "w0a0"]), "budgets: w0a0 is below the cheapest policy"),
    "device tpu9": (lambda c: c.update(device="tpu9"), "device: String should match pattern"),
}


@pytest.mark.parametrize("case", sorted(BAD_SUITES))
def test_config_errors_stop_the_dry_run(case, tmp_path):
    """A suite that cannot run stops `snakemake -n` (before any job) with one readable line per problem."""
    copy_tree(tmp_path)
    cfg = yaml.safe_load((tmp_path / SUITES["smoke"]).read_text())
    edit, expected = BAD_SUITES[case]
    edit(cfg)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "all", "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0 and expected in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]


def test_a_key_given_twice_stops_the_dry_run(tmp_path):
    copy_tree(tmp_path)
    text = (tmp_path / SUITES["smoke"]).read_text()
    (tmp_path / "bad.yaml").write_text(text + "\nseeds: [0, 1]\n")  # YAML would silently keep the last one
    proc = snakemake(tmp_path, "all", "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0 and "the key 'seeds' is given twice in one mapping" in proc.stdout + proc.stderr


def test_missing_dataset_stops_the_run_with_how_to_get_it(tmp_path):
    copy_tree(tmp_path)
    env = stub_env(tmp_path, STUB_MISSING="fashion-mnist")
    proc = snakemake(tmp_path, "all", "--cores", "1", "--configfile", SUITES["smoke"], env=env, check=False)
    assert proc.returncode != 0
    assert "error: dataset 'fashion-mnist' is missing; apt-get install -y dataset-fashion-mnist" in proc.stdout + proc.stderr
    assert [c[0] for c in calls(tmp_path)] == ["info"]  # nothing else ran


# ---- execution with the stub CLI -------------------------------------------------------------------------
def test_reproduce_command_recreates_a_record_of_any_suite(tmp_path):
    """The Snakemake line the leaderboard shows for a record re-runs exactly that cell's search, fine-tune and
    evaluation and re-creates the record file, for the smoke suite and for a second suite whose results_dir is
    elsewhere; the search line is the workflow's own search command for the cell."""
    from mpqbench import board as lb

    copy_tree(tmp_path)
    other = yaml.safe_load((tmp_path / SUITES["smoke"]).read_text())
    other.update(suite="other", results_dir="elsewhere/results", methods={"gmpq": {"method": "gmpq"},
                                                                        "edmips": {"method": "edmips"}})
    (tmp_path / "config" / "other.yaml").write_text(yaml.safe_dump(other))
    env = stub_env(tmp_path)
    for suite_file, cell in ((SUITES["smoke"], ("resnet20", "w3a3", "asga-sam", "digits", 0)),
                             ("config/other.yaml", ("resnet20", "w3a3", "gmpq", "digits", 0))):
        snakemake(tmp_path, "all", "--cores", "2", "--configfile", suite_file, env=env)
        calls(tmp_path)
        suite = yaml.safe_load((tmp_path / suite_file).read_text())
        arch, budget, method, proxy, seed = cell
        rec = {"suite": suite["suite"], "arch": arch, "budget": {"name": budget}, "method": method, "proxy": proxy,
               "seed": seed, "target": "fashion-mnist"}
        cmds = lb.reproduce_commands(rec, root=tmp_path)
        record = tmp_path / lb.record_relpath(rec, root=tmp_path)
        assert record.is_file() and record.is_relative_to(tmp_path / suite["results_dir"])
        before = record.read_text()
        record.write_text("{}")  # so we can see it re-made
        proc = subprocess.run(["bash", "-c", cmds["snakemake"]], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        ran = calls(tmp_path)
        assert [c[0] for c in ran if c[0] in ("search", "finetune", "evaluate")] == ["search", "finetune", "evaluate"]
        search = next(c for c in ran if c[0] == "search")
        assert search[search.index("--label") + 1] == method and search[search.index("--seed") + 1] == "0"
        remade = json.loads(record.read_text())
        assert remade["stub"] == "evaluate" and remade["argv"][remade["argv"].index("--out") + 1] == str(
            record.relative_to(tmp_path)) and json.loads(before)["stub"] == "evaluate"
        # the search line is the workflow's search command for the cell, minus the state folder and --no-progress
        def without(words, *options):
            words = list(words)
            for opt in options:
                if opt in words:
                    i = words.index(opt)
                    del words[i:i + 2]
            return words

        shown = without(shlex.split(cmds["search"])[2:], "--out")
        workflow = without(search[1:], "--out", "--work-dir")
        assert [w for w in workflow if w != "--no-progress"] == shown


@pytest.mark.slow
def test_a_failed_aggregate_leaves_the_committed_results(tmp_path):
    """Snakemake deletes the outputs of a failed job: the aggregates the suite had before are put back."""
    copy_tree(tmp_path)
    env = stub_env(tmp_path)
    smoke = SUITES["smoke"]
    snakemake(tmp_path, "all", "--cores", "2", "--configfile", smoke, env=env)
    results = tmp_path / "work" / "smoke" / "results"
    before = {p: p.read_bytes() for p in (results / "leaderboard.csv", results / "summary.json", results / "jobs.tsv",
                                          results / "metrics.json", results / "leaderboard.html")}
    next(iter(sorted((results / "runs").rglob("*.json")))).unlink()  # a record to re-make, then a failing aggregate
    proc = snakemake(tmp_path, "all", "--cores", "2", "--configfile", smoke, env=stub_env(tmp_path, STUB_FAIL="aggregate"),
                     check=False)
    assert proc.returncode != 0 and "stub aggregate fails on purpose" in (tmp_path / "logs" / "smoke" / "aggregate.log").read_text()
    assert {p: p.read_bytes() for p in before} == before
    assert "restored" in proc.stderr and (results / "figures" / "pareto.png").exists()


@pytest.mark.slow
def test_rerun_does_nothing_and_a_deleted_record_reruns_only_its_job(tmp_path):
    copy_tree(tmp_path)
    env = stub_env(tmp_path)
    smoke = SUITES["smoke"]
    snakemake(tmp_path, "all", "--cores", "2", "--configfile", smoke, env=env)
    first = calls(tmp_path)
    n = len(load_suite(yaml.safe_load((tmp_path / smoke).read_text())).runs())
    assert sum(c[0] == "evaluate" for c in first) == n
    results = tmp_path / "work" / "smoke" / "results"
    records = sorted((results / "runs" / "smoke").rglob("*.json"))
    assert len(records) == n
    assert (results / "leaderboard.csv").exists() and (results / "figures" / "pareto.png").exists()
    for log in ("check_data.log", "aggregate.log", "figures.log"):
        assert (tmp_path / "logs" / "smoke" / log).exists()
    assert list((tmp_path / "logs" / "benchmarks" / "smoke" / "search").rglob("*.tsv"))

    # a finished suite: nothing to do
    proc = snakemake(tmp_path, "all", "--cores", "2", "--configfile", smoke, env=env)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert calls(tmp_path) == []

    # one record deleted: only its evaluation (and the derived aggregate and figures) runs again
    victim = records[len(records) // 2]
    victim.unlink()
    snakemake(tmp_path, "all", "--cores", "2", "--configfile", smoke, env=env)
    again = calls(tmp_path)
    assert [c[0] for c in again] == ["evaluate", "aggregate", "export", "figures"]
    assert again[0][again[0].index("--out") + 1] == str(victim.relative_to(tmp_path))

    # a changed fine-tune setting re-runs fine-tune + evaluation of every cell, and no search
    cfg = yaml.safe_load((tmp_path / smoke).read_text())
    cfg["finetune"]["lr"] = 0.02
    (tmp_path / smoke).write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "all", "-n", "--configfile", smoke, env=env)
    assert job_counts(proc.stdout) == {"finetune": n, "evaluate": n, "aggregate": 1, "figures": 1, "all": 1}


@pytest.mark.slow
def test_dvc_repro_metrics_and_experiment_in_a_fresh_repo(tmp_path):
    repo = copy_tree(tmp_path / "repo", extra=("dvc.yaml", ".dvc", ".dvcignore", "mpqbench", "baselines"))
    for local in ("cache", "tmp"):  # a clone has only .dvc's tracked files, not this checkout's run cache
        shutil.rmtree(repo / ".dvc" / local, ignore_errors=True)
    (repo / ".gitignore").write_text("/work/\n/logs/\n/.snakemake/\n")
    env = stub_env(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    assert (repo / ".dvc" / "config").exists(), ".dvc/config must be committed"

    run_dvc(repo, "repro", env=env)
    first = calls(tmp_path)
    cfg = load_suite(yaml.safe_load((repo / SUITES["default"]).read_text()))
    assert sum(c[0] == "evaluate" for c in first) == len(cfg.runs())
    assert (repo / "dvc.lock").exists()
    metrics = run_dvc(repo, "metrics", "show", "--json", env=env)
    assert json.loads(metrics.stdout)  # results/metrics.json (the export's headline metrics) is read as the metrics
    assert "records" in metrics.stdout

    assert "up to date" in run_dvc(repo, "repro", env=env).stdout.lower()
    assert calls(tmp_path) == []

    # an experiment with one more seed runs only the new seed's jobs and the aggregate
    run_dvc(repo, "exp", "run", "-S", "config/config.yaml:seeds=[0,1,2,3]", env=env)
    exp_calls = calls(tmp_path)
    assert {c[0] for c in exp_calls} == {"search", "finetune", "evaluate", "aggregate", "export", "figures"}
    assert all(c[c.index("--seed") + 1] == "3" for c in exp_calls if c[0] in {"search", "finetune"})
    rows = list(csv.DictReader((repo / "results" / "leaderboard.csv").open()))
    assert len(cfg.seeds) == 3 and len(rows) == len(cfg.runs()) // 3 * 4
    assert "seeds" in run_dvc(repo, "exp", "show", "--csv", env=env).stdout


# ---- the real thing --------------------------------------------------------------------------------------
def _real_cli_ready() -> str | None:
    """None when the CLI and every method of the smoke suite exist, else why not."""
    try:
        from mpqbench.cli import build_parser
        from mpqbench.data import dataset_status
        from mpqbench.search import list_methods
    except ImportError as exc:
        return f"mpqbench is not complete yet ({exc})"
    cfg = load_suite(yaml.safe_load((ROOT / SUITES["smoke"]).read_text()))
    missing = sorted({m.method for m in cfg.methods.values()} - set(list_methods()))
    if missing:
        return f"methods not registered yet: {', '.join(missing)}"
    search_help = build_parser()._subparsers._group_actions[0].choices["search"].format_help()
    if "--epochs" not in search_help:
        return "`mpqbench search` has no --epochs/--batch-size yet (CLI contract)"
    absent = [d["name"] for d in dataset_status() if d["name"] in {"digits", "fashion-mnist"} and not d["present"]]
    if absent:
        return f"datasets missing: {', '.join(absent)}"
    return None


@pytest.mark.slow
def test_smoke_suite_really_runs(tmp_path):
    reason = _real_cli_ready()
    if reason:
        pytest.skip(reason)
    from mpqbench.records import RunRecord

    copy_tree(tmp_path)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "tree"], check=True)
    t0 = time.perf_counter()
    # the README's first command's path (`mpqbench reproduce`: the suite from scratch, then the comparison with
    # the committed records) on the smoke suite: 26 runs of every registered method, ~10 min on a busy machine
    proc = subprocess.run(["mpqbench", "reproduce", "--configfile", SUITES["smoke"], "--cores", "2"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=2400)
    wall_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("reproduce: snakemake --cores 2 --forceall --configfile config/smoke.yaml -- all\n")
    assert re.search(r"^reproduce: the suite ran from scratch in \d+\.\d min$", proc.stdout, re.M)
    assert proc.stdout.count("compare: ") == 1  # printed once, by reproduce (the workflow's own is switched off)
    assert re.search(r"^compare: work/smoke/results/runs/ holds 26 run records; nothing to compare them with \(no "
                     r"records under work/smoke/results/runs/ in git HEAD \([0-9a-f]+\)\)$", proc.stdout, re.M), proc.stdout
    results = tmp_path / "work" / "smoke" / "results"
    cfg = load_suite(yaml.safe_load((tmp_path / SUITES["smoke"]).read_text()))
    records = sorted((results / "runs" / "smoke").rglob("*.json"))
    assert len(records) == len(cfg.runs())
    for path in records:
        rec = RunRecord.load(path)
        assert rec.status == "ok" and rec.suite == "smoke" and 0 <= rec.metrics.top1 <= 100
        assert path.parent.name == rec.method and path.name.startswith(f"{rec.proxy}-to-")
        assert rec.achieved.bitops_g_searchable <= rec.budget.bitops_g * (1 + 1e-6)
    rows = list(csv.DictReader((results / "leaderboard.csv").open()))
    assert len(rows) == len(records)
    assert json.loads((results / "summary.json").read_text())

    # the leaderboard's reproduce command recreates the workflow's policy: a subset proxy, a teacher method
    from mpqbench import board as lb

    frame = lb.records_to_frame([json.loads(p.read_text()) for p in records])
    for method, proxy in (("edmips", "fashion-mnist-subset"), ("gmpq", "digits")):
        row = frame[(frame["method"] == method) & (frame["proxy"] == proxy)].iloc[0]
        out = tmp_path / f"again-{method}.json"
        cmd = shlex.split(lb.reproduce_commands(row, out=str(out))["search"]) + ["--device", "cpu", "--no-progress"]
        subprocess.run(cmd, cwd=tmp_path, env=dict(env, OMP_NUM_THREADS="1"), check=True, capture_output=True)
        made = tmp_path / "work" / "smoke" / "policies" / row["arch"] / row["budget"] / method / f"{proxy}-to-{row['target']}-s0.json"
        again, orig = json.loads(out.read_text()), json.loads(made.read_text())
        assert again["layers"] == orig["layers"], method
        assert again["search"]["macs_processed"] == orig["search"]["macs_processed"]
        keys = ("proxy", "proxy_dataset", "proxy_subset", "proxy_input_size", "target_input_size", "width",
                "hparams", "teacher_macs")
        assert {k: again["search"].get(k) for k in keys} == {k: orig["search"].get(k) for k in keys}
        assert orig["search"].get("proxy_subset") == (256 if proxy == "fashion-mnist-subset" else None)
    assert list((results / "figures").glob("*.png"))
    # the leaderboard is derived: regenerating it from the same records is byte-identical
    before = (results / "leaderboard.csv").read_bytes()
    subprocess.run(["mpqbench", "aggregate", "--runs", str(results / "runs"), "--out-dir", str(results)],
                   env=env, check=True, capture_output=True)
    assert (results / "leaderboard.csv").read_bytes() == before
    proc = snakemake(tmp_path, "all", "--cores", "2", "--configfile", SUITES["smoke"], env=env)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    # committed, the same records compare identical; one edited record is named with its top-1 change
    subprocess.run([*git, "add", "-f", "work/smoke/results/runs"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "smoke records"], check=True)
    compare = ["mpqbench", "compare", "--runs", "work/smoke/results/runs", "--strict"]
    proc = subprocess.run(compare, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and re.fullmatch(r"compare: work/smoke/results/runs/ holds 26 run records, identical "
                                                 r"to the committed ones \(git HEAD [0-9a-f]+\)\n", proc.stdout), proc.stdout
    edited = records[0]
    data = json.loads(edited.read_text())
    data["metrics"]["top1"] += 1.0
    edited.write_text(json.dumps(data))
    proc = subprocess.run(compare, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "25 identical, 1 differ" in proc.stdout and "(+1.00 pt)" in proc.stdout
    print(f"the smoke suite took {wall_s:.0f} s")  # timings are measured in benchmarks, not asserted in tests
