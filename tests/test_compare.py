"""`mpqbench compare` / `reproduce`: a results folder's records against the ones committed in git.

The records are real ones (three seeds of two entries of the committed default results), committed in a fresh
git repository in a temp folder and then edited the way a re-run on another stack would change them.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from mpqbench.board.compare import comparable, compare_with_git, format_comparison, seed_noise
from mpqbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "results" / "runs" / "default" / "resnet20" / "w3a3"
ENTRIES = ("uniform", "asga")


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                   check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    runs = tmp_path / "results" / "runs"
    for entry in ENTRIES:
        dest = runs / "default" / "resnet20" / "w3a3" / entry
        dest.mkdir(parents=True)
        for path in sorted((SOURCE / entry).glob("digits-to-fashion-mnist-s*.json")):
            shutil.copy2(path, dest / path.name)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "records")
    return tmp_path


def record(repo: Path, entry: str, seed: int) -> Path:
    return repo / "results" / "runs" / "default" / "resnet20" / "w3a3" / entry / f"digits-to-fashion-mnist-s{seed}.json"


def edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def top1(path: Path) -> float:
    return json.loads(path.read_text())["metrics"]["top1"]


def test_the_fixture_has_three_seeds_per_entry(repo):
    for entry in ENTRIES:
        assert [record(repo, entry, s).is_file() for s in range(3)] == [True] * 3


def test_identical_records_and_volatile_fields(repo):
    runs = repo / "results" / "runs"
    c = compare_with_git(runs)
    assert c.all_identical and c.total == 6 and c.identical == 6
    assert format_comparison(c) == [f"compare: {runs.as_posix()}/ holds 6 run records, identical to the committed "
                                    f"ones ({c.against})"]
    # what the machine and the moment decide does not count
    edit(record(repo, "asga", 0), lambda d: (d.update(created_utc="2030-01-01T00:00:00Z"),
                                             d["search"].update(wall_s=1.0, device="cuda: H200"),
                                             d["finetune"].update(wall_s=2.0), d["env"].update(threads=16),
                                             d["git"].update(commit="0" * 40)))
    assert compare_with_git(runs).all_identical


def test_a_moved_run_is_listed_with_its_delta(repo):
    runs = repo / "results" / "runs"
    path = record(repo, "asga", 1)
    before = top1(path)
    edit(path, lambda d: d["metrics"].update(top1=before + 0.5))
    c = compare_with_git(runs)
    assert not c.all_identical and c.identical == 5 and len(c.differences) == 1
    (d,) = c.differences
    assert d.run[4:] == ("asga", "digits", 1) and d.fields == ["metrics"]
    assert d.delta == pytest.approx(0.5)
    lines = format_comparison(c)
    assert "5 identical, 1 differ" in lines[0]
    assert f"resnet20 w3a3 asga@digits s1: top-1 {before:.2f} -> {before + 0.5:.2f} (+0.50 pt)" in lines[1]


def test_the_seed_noise_decides_what_is_flagged(repo):
    runs = repo / "results" / "runs"
    seeds = [top1(record(repo, "uniform", s)) for s in range(3)]
    noise = seed_noise(seeds)
    mean = sum(seeds) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in seeds) / 2)
    assert noise == pytest.approx(4.302652729911275 * sd / math.sqrt(3))  # t(0.975, 2)
    # every seed of uniform moves by 1.5 x its entry's noise: flagged; asga's seed 0 by a tenth of its: not
    for s in range(3):
        edit(record(repo, "uniform", s), lambda d: d["metrics"].update(top1=d["metrics"]["top1"] + 1.5 * noise))
    asga_noise = seed_noise([top1(record(repo, "asga", s)) for s in range(3)])
    edit(record(repo, "asga", 0), lambda d: d["metrics"].update(top1=d["metrics"]["top1"] + 0.3 * asga_noise))
    c = compare_with_git(runs)
    assert [(e[4], round(delta, 6)) for e, delta, _ in c.flagged] == [("uniform", round(1.5 * noise, 6))]
    assert [(e[4], round(delta, 6)) for e, delta, _ in c.within_noise] == [("asga", round(0.1 * asga_noise, 6))]
    lines = format_comparison(c)
    assert any(line.startswith("  FLAG resnet20 w3a3 uniform@digits: mean top-1 moved +") and
               f"beyond its seed noise ±{noise:.2f}" in line for line in lines), lines
    assert lines[-1] == "  1 moved entry within their seed noise (the committed 95 % CI half-width)"


def test_policy_change_new_and_missing_runs(repo):
    runs = repo / "results" / "runs"
    edit(record(repo, "asga", 2), lambda d: d["layers"]["layer1.0.conv1"].update(w=4))
    shutil.copy2(record(repo, "asga", 2), record(repo, "asga", 2).with_name("digits-to-fashion-mnist-s7.json"))
    edit(record(repo, "asga", 2).with_name("digits-to-fashion-mnist-s7.json"), lambda d: d.update(seed=7, run_id="0123456789ab"))
    record(repo, "uniform", 0).unlink()
    c = compare_with_git(runs)
    assert [d.fields for d in c.differences] == [["layers"]] and c.differences[0].delta == 0
    assert [k[4:] for k in c.new] == [("asga", "digits", 7)] and [k[4:] for k in c.missing] == [("uniform", "digits", 0)]
    text = "\n".join(format_comparison(c))
    assert "4 identical, 1 differ, 1 not committed, 1 committed but missing here" in text
    assert "asga@digits s2: layers differ" in text and "uniform@digits s0: committed but missing here" in text


def test_no_git_or_no_committed_records_says_so(tmp_path_factory, repo):
    plain = tmp_path_factory.mktemp("plain") / "results"
    shutil.copytree(repo / "results", plain)
    assert "nothing to compare them with (not a git checkout)" in format_comparison(compare_with_git(plain / "runs"))[0]
    other = repo / "results" / "other-runs"
    shutil.copytree(repo / "results" / "runs", other)
    line = format_comparison(compare_with_git(other))[0]
    assert "holds 6 run records; nothing to compare them with (no records under results/other-runs/ in git HEAD" in line


def test_comparable_drops_only_volatile_keys():
    rec = {"metrics": {"top1": 1.0}, "search": {"wall_s": 3, "steps": 2, "trace": [{"wall_s": 1, "loss": 2}]},
           "env": {}, "created_utc": "x", "_path": "a.json"}
    assert comparable(rec) == {"metrics": {"top1": 1.0}, "search": {"steps": 2, "trace": [{"loss": 2}]}}


def test_cli_compare_strict_and_errors(repo, capsys, monkeypatch):
    runs = repo / "results" / "runs"
    assert main(["compare", "--runs", str(runs), "--strict"]) == 0
    assert "identical to the committed ones (git HEAD" in capsys.readouterr().out
    edit(record(repo, "asga", 0), lambda d: d["metrics"].update(top1=1.0))
    assert main(["compare", "--runs", str(runs)]) == 0
    assert main(["compare", "--runs", str(runs), "--strict"]) == 1
    assert "1 differ" in capsys.readouterr().out
    assert main(["compare", "--runs", str(repo / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    monkeypatch.chdir(repo)
    assert main(["reproduce"]) == 2
    assert "no Snakefile here" in capsys.readouterr().err
