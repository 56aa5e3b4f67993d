"""The committed results folders hold what their suite files promise: every entry at both budgets, three seeds,
inside the budget window, from one clean commit, with the suite's cost in jobs.tsv and summary.json."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from mpqbench import board as lb
from mpqbench import runs
from mpqbench.config import load_suite

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"results": "config/config.yaml", "results/extended": "config/extended.yaml",
           "results/archs": "config/archs.yaml"}


@pytest.mark.parametrize("folder, suite_file", FOLDERS.items())
def test_committed_results_cover_their_suite(folder, suite_file):
    suite = load_suite(yaml.safe_load((ROOT / suite_file).read_text()))
    layout = runs.Layout.of(suite)
    assert layout.results_dir == folder
    records, problems = lb.load_records(ROOT / layout.runs_dir, strict=True)
    assert not problems
    expected = {(r.arch, r.budget, r.method, r.proxy, r.seed) for r in suite.runs()}
    found = {(r["arch"], r["budget"]["name"], r["method"], r["proxy"], r["seed"]) for r in records}
    assert found == expected  # every run of the suite, nothing else
    commits = {(r["git"]["commit"], r["git"]["dirty"]) for r in records}
    assert len(commits) == 1 and next(iter(commits))[1] is False  # one commit, clean tree
    seeds = defaultdict(set)
    for r in records:
        assert r["status"] == "ok" and r["suite"] == suite.suite
        used = r["achieved"]["budget_used"]
        if r["search"].get("extraction") != "argmax":  # the published argmax extraction is kept to show its gap
            assert suite.budget_floor - 1e-9 <= used <= 1 + 1e-9, (r["method"], r["budget"]["name"], used)
        seeds[(r["budget"]["name"], r["method"], r["proxy"])].add(r["seed"])
    assert all(s == {0, 1, 2} for s in seeds.values())
    # the suite's cost: one jobs.tsv row per job, summing to summary.json's job time
    with open(ROOT / folder / runs.AGGREGATE_FILES["jobs"]) as fh:
        jobs = list(csv.DictReader(fh, delimiter="\t"))
    by_rule = defaultdict(int)
    for row in jobs:
        by_rule[row["rule"]] += 1
    assert by_rule["search"] == by_rule["finetune"] == by_rule["evaluate"] == len(expected)
    cost = json.loads((ROOT / folder / runs.AGGREGATE_FILES["summary"]).read_text())["suite_cost"]
    assert cost["jobs"] == len(jobs)
    assert abs(cost["job_time_s"] - sum(float(r["wall_s"]) for r in jobs)) < 0.1


def test_extended_suite_runs_every_new_baseline_at_both_budgets():
    records, _ = lb.load_records(ROOT / "results" / "extended" / "runs", strict=True)
    cells = {(r["base_method"], r["budget"]["name"]) for r in records}
    for method in ("haq", "dq", "hmq", "seam", "limpq", "ompq"):
        assert {(method, "w3a3"), (method, "w2.5a2.5")} <= cells, method


def test_architecture_suite_holds_both_networks_at_their_own_budgets():
    """results/archs: ResNet-20 and MobileNetV2 each at the two budgets of its own (w3a3, w2.5a2.5; w3.5a3.5,
    w4a4), every entry of the suite on both, and its summary carries ASGA's gains per architecture."""
    records, _ = lb.load_records(ROOT / "results" / "archs" / "runs", strict=True)
    cells = {(r["arch"], r["budget"]["name"]) for r in records}
    assert cells == {("resnet20", "w3a3"), ("resnet20", "w2.5a2.5"), ("mobilenet_v2", "w3.5a3.5"),
                     ("mobilenet_v2", "w4a4")}
    methods = {arch: {r["method"] for r in records if r["arch"] == arch} for arch in ("resnet20", "mobilenet_v2")}
    assert methods["resnet20"] == methods["mobilenet_v2"] >= {"uniform", "random", "hawq", "edmips", "edmips-target",
                                                             "gmpq", "asga", "asga-probe"}
    assert {r["search"]["width"] for r in records if r["arch"] == "mobilenet_v2"} == {0.35}
    summary = json.loads((ROOT / "results" / "archs" / runs.AGGREGATE_FILES["summary"]).read_text())
    for arch, budgets in (("resnet20", ("w3a3", "w2.5a2.5")), ("mobilenet_v2", ("w3.5a3.5", "w4a4"))):
        for budget in budgets:
            group = summary["groups"]["archs"][arch]["fashion-mnist"][budget]
            assert "asga@digits" in group["entries"] and group["gain_at_equal_accuracy"], (arch, budget)
