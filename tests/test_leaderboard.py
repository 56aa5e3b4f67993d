"""mpqbench.board: flattening, CSV determinism, validation, ranking, Pareto front, gains.

Expected numbers are computed by hand from tests/fixtures/results_small (see make_fixtures.py):
resnet20 / w3a3 / fashion-mnist, mean top-1 over ok seeds:
  edmips-target@fashion-mnist 89.5, asga@fmnist-subset 89.3, asga@digits 89.0 (88, 89, 90),
  asga-sam 88.5, gmpq-asga 87.5, gmpq 87.25, edmips 86.5 (seed 2 failed), hawq 85, uniform 84, random 81.
Mean search MACs: asga 2e12 (2.2, 1.8, 2.0), gmpq-asga 3e12, gmpq 4e12, edmips 1e12, edmips-target 5e12.
results_small is a suite with budget window [0.85, 1]: every entry is budget-matched.

tests/fixtures/results_curves (new-style records; see CURVES in make_fixtures.py), w3a3, seeds 0, 1, 2:
  reference edmips-target top-1 per seed at 1, 2, 4, 8 T MACs (lengths 0.25, 0.5, 1, 2; wall 50, 100, 200,
  400 s): (84, 85, 86), (87, 87.5, 88), (86.5, 87, 87.5), (88, 89, 90) -> means 85, 87.5, 87, 89;
  isotonic fit 85, 87.25, 87.25, 89 (the middle two pooled);
  asga 88 (87.5, 88, 88.5) at 1 T MACs / 60 s; asga-rhomin 90 (89.5, 90, 90.5) at 1 T MACs;
  gmpq-asga 84.5 at 3 T MACs / 150 s; uniform (88, 86, 85.5); edmips-argmax 91 at 44 % of the budget.
"""

from __future__ import annotations

import json
import math
import os
import random
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mpqbench import board as lb
from mpqbench.errors import UserError
from mpqbench.records import RunRecord

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = FIXTURES / "results_small"
CURVES = FIXTURES / "results_curves"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def records() -> list[dict]:
    recs, problems = lb.load_records(SMALL / "runs")
    assert problems == []
    return recs


@pytest.fixture(scope="module")
def frame(records) -> pd.DataFrame:
    return lb.records_to_frame(records)


@pytest.fixture(scope="module")
def ranked(frame) -> pd.DataFrame:
    return lb.rank_methods(lb.filter_frame(frame))


def _entry(df: pd.DataFrame, method: str, proxy: str = "digits", budget: str = "w3a3", arch: str = "resnet20"):
    sel = df[(df["method"] == method) & (df["proxy"] == proxy) & (df["budget"] == budget) & (df["arch"] == arch)]
    assert len(sel) == 1, (method, proxy, budget)
    return sel.iloc[0]


# ------------------------------------------------------------------ flattening and the CSV


def test_frame_has_one_row_per_record_with_fixed_columns(records, frame):
    assert len(frame) == len(records) == 27
    assert list(frame.columns) == list(lb.COLUMNS)
    row = frame[(frame["method"] == "asga-sam") & (frame["seed"] == 1)].iloc[0]
    assert row["base_method"] == "asga"
    assert row["top1_pct"] == 88.5
    assert row["search_hparams"] == '{"align":false,"rho_max":0.1}'
    assert row["record_path"] == "results/runs/default/resnet20/w3a3/asga-sam/digits-to-fashion-mnist-s1.json"
    failed = frame[frame["status"] == "failed"]
    assert len(failed) == 1 and pd.isna(failed.iloc[0]["top1_pct"]) and "diverged" in failed.iloc[0]["reason"]


def test_record_path_column_matches_the_file_it_came_from(records, frame):
    on_disk = {"results/runs/" + r["_path"] for r in records}
    assert set(frame["record_path"]) == on_disk


def test_frame_and_csv_do_not_depend_on_record_order(records, frame):
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)
    assert lb.frame_to_csv(lb.records_to_frame(shuffled)) == lb.frame_to_csv(frame)


def test_csv_is_byte_identical_on_regeneration_and_round_trips(frame, tmp_path):
    a, b = tmp_path / "a" / "leaderboard.csv", tmp_path / "b.csv"
    lb.write_leaderboard_csv(frame, a)
    lb.write_leaderboard_csv(lb.read_leaderboard_csv(a), b)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes().count(b"\n") == len(frame) + 1 and b"\r" not in a.read_bytes()
    back = lb.read_leaderboard_csv(a)
    pd.testing.assert_frame_equal(back, frame)


def test_read_leaderboard_csv_rejects_malformed_files(tmp_path):
    bad = tmp_path / "leaderboard.csv"
    bad.write_text("suite,arch\nx,y\n")
    with pytest.raises(UserError, match="lacks column"):
        lb.read_leaderboard_csv(bad)
    text = lb.frame_to_csv(lb.records_to_frame(lb.load_records(SMALL / "runs")[0][:1]))
    bad.write_text(text.replace(",90.0,", ",ninety,", 1))
    with pytest.raises(UserError, match="malformed value"):
        lb.read_leaderboard_csv(bad)


# ------------------------------------------------------------------ validation and loading


def test_malformed_files_are_skipped_and_named():
    recs, problems = lb.load_records(FIXTURES / "results_malformed" / "runs")
    assert [r["method"] for r in recs] == ["asga"]
    assert len(problems) == 2
    assert any("broken/" in p and "not readable JSON" in p for p in problems)
    assert any("gmpq/" in p and "seed: required field is missing" in p and "metrics: required" in p for p in problems)
    with pytest.raises(UserError, match="2 bad run record"):
        lb.load_records(FIXTURES / "results_malformed" / "runs", strict=True)


def test_validate_record_accepts_failed_runs_without_metrics(records):
    failed = next(r for r in records if r["status"] == "failed")
    assert failed["metrics"] is None and lb.validate_record(failed) == []
    assert lb.validate_record([]) == ["not a JSON object"]
    assert "status" in " ".join(lb.validate_record({**records[0], "status": "done"}))


def test_duplicate_runs_are_reported(tmp_path):
    shutil.copytree(SMALL / "runs" / "default" / "mobilenet_v2", tmp_path / "runs" / "a")
    shutil.copytree(SMALL / "runs" / "default" / "mobilenet_v2", tmp_path / "runs" / "b")
    recs, problems = lb.load_records(tmp_path / "runs")
    assert len(recs) == 2 and len(problems) == 2 and all("duplicate of a/" in p for p in problems)


# ------------------------------------------------------------------ one record loader for aggregate and the app

ASGA_S0 = "default/resnet20/w3a3/asga/digits-to-fashion-mnist-s0.json"  # asga@digits seeds 0, 1, 2: 88, 89, 90


def _results(tmp_path: Path) -> Path:
    """A copy of results_small (27 valid runs) to add odd files to."""
    shutil.copytree(SMALL, tmp_path / "results")
    return tmp_path / "results"


def _asga_s0() -> dict:
    return json.loads((SMALL / "runs" / ASGA_S0).read_text())


def _both_loaders(results: Path) -> tuple[list[dict], list[str]]:
    """The records and problems of the loader ``mpqbench aggregate`` uses, checked against the app's view."""
    recs, problems = lb.load_records(results / "runs")
    app = lb.load_results(results)
    assert app.problems == problems
    assert sorted(app.records) == sorted(r["run_id"] for r in recs)
    return recs, problems


def _asga_digits_seeds(recs: list[dict]) -> int:
    return int(_entry(lb.rank_methods(lb.records_to_frame(recs)), "asga")["n_seeds"])


@pytest.mark.parametrize("copy_to, seed", [
    ("zz-copy/asga-s0.json", None),  # a plain copy elsewhere
    ("default/resnet20/w3a3/asga/digits-to-fashion-mnist-s3.json", 3),  # a copy relabelled as seed 3 (same run_id)
])
def test_a_copied_record_is_one_run_for_both_loaders(tmp_path, copy_to, seed):
    results = _results(tmp_path)
    rec = _asga_s0()
    if seed is not None:
        rec["seed"] = seed
    (results / "runs" / copy_to).parent.mkdir(parents=True, exist_ok=True)
    (results / "runs" / copy_to).write_text(json.dumps(rec))
    recs, problems = _both_loaders(results)
    same = f"same run_id {rec['run_id']}" if seed else "same suite/arch/target/budget/method/proxy/seed"
    first, second = sorted([ASGA_S0, copy_to])
    assert problems == [f"{second}: duplicate of {first} ({same}); left out"]
    assert len(recs) == 27 and _asga_digits_seeds(recs) == 3
    with pytest.raises(UserError, match=f"1 bad run record.*{second}: duplicate of {first}"):
        lb.load_records(results / "runs", strict=True)


def test_aggregate_counts_a_copied_record_once(tmp_path):
    from mpqbench.pipeline import aggregate

    results = _results(tmp_path)
    (results / "runs" / "zz-copy").mkdir()
    shutil.copy(results / "runs" / ASGA_S0, results / "runs" / "zz-copy" / "asga-s0.json")
    try:
        aggregate(runs_dir=results / "runs", out_dir=tmp_path / "out", figures=False, snakemake_log_dir=None)
    except UserError as exc:  # a strict aggregate refuses, naming the copy
        assert "zz-copy/asga-s0.json: duplicate of" in str(exc)
    else:
        assert len(lb.read_leaderboard_csv(tmp_path / "out" / "leaderboard.csv")) == 27


def _set(rec: dict, dotted: str, value) -> None:
    *parents, key = dotted.split(".")
    for part in parents:
        rec = rec.setdefault(part, {})
    rec[key] = value


@pytest.mark.parametrize("changes, says", [
    ({"metrics.top1": math.inf}, "metrics.top1: Input should be a finite number (got inf)"),
    ({"metrics.top1": math.nan}, "metrics.top1: Input should be a finite number (got nan)"),
    ({"metrics.top1": 200.0}, "metrics.top1: Input should be less than or equal to 100 (got 200.0)"),
    ({"metrics.top1": -1}, "metrics.top1: Input should be greater than or equal to 0 (got -1)"),
    ({"metrics.top5": -math.inf}, "metrics.top5: Input should be a finite number"),
    ({"metrics.loss": -0.5}, "metrics.loss: Input should be greater than or equal to 0"),
    ({"metrics.top1": "88.5"}, "metrics.top1: Input should be a valid number (got '88.5')"),
    ({"seed": True}, "seed: Input should be a valid integer (got True)"),
    ({"fp_top1": 101.0}, "fp_top1: Input should be less than or equal to 100"),
    ({"achieved.bitops_g_all": -1.0}, "achieved.bitops_g_all must be a finite number >= 0 (got -1.0)"),
    ({"achieved.size_mb": math.nan}, "achieved.size_mb must be a finite number >= 0 (got nan)"),
    ({"search.macs_processed": math.inf}, "search.macs_processed must be a finite number >= 0 (got inf)"),
    ({"search.wall_s": -3.0}, "search.wall_s must be a finite number >= 0 (got -3.0)"),
    ({"search.budget_floor": 1.5}, "search.budget_floor must be a finite number within [0, 1] (got 1.5)"),
    ({"env.note": math.nan}, "env.note: NaN/Infinity is not a JSON number"),
    ({"metrics": None}, "a run with status ok needs metrics"),
    ({"status": "failed", "metrics": None, "reason": " "}, "a run with status failed needs a reason"),
    ({"schema_version": 2}, "schema_version: Input should be 1"),
])
def test_numbers_the_leaderboard_cannot_trust_are_rejected_by_every_loader(tmp_path, changes, says):
    results = _results(tmp_path)
    rec = _asga_s0()
    for dotted, value in changes.items():
        _set(rec, dotted, value)
    path = results / "runs" / ASGA_S0
    path.write_text(json.dumps(rec))  # inf/nan become Infinity/NaN, which Python's json module reads back
    recs, problems = _both_loaders(results)
    assert len(recs) == 26 and len(problems) == 1
    assert problems[0].startswith(f"{ASGA_S0}: ") and says in problems[0], problems[0]
    with pytest.raises(UserError, match=f"1 bad run record.*{ASGA_S0}"):
        lb.load_records(results / "runs", strict=True)
    with pytest.raises(UserError, match="is malformed"):
        RunRecord.load(path)
    assert lb.validate_record(rec) and says in lb.validate_record(rec)[0]


@pytest.mark.parametrize("field, value", [("budget.name", "W3A3"), ("budget.name", " w3a3 "), ("budget.name", "w3a3\n"),
                                          ("budget.name", "3a3"), ("proxy", "Digits"), ("method", " asga")])
def test_a_non_canonical_name_does_not_form_a_group_of_its_own(tmp_path, field, value):
    results = _results(tmp_path)
    rec = _asga_s0()
    _set(rec, field, value)
    rec.update(seed=7, run_id="00000000beef")  # not a duplicate: its own run, but named off-canon
    (results / "runs" / "odd.json").write_text(json.dumps(rec))
    recs, problems = _both_loaders(results)
    frame = lb.records_to_frame(recs)
    assert len(recs) == 27 and set(frame["budget"]) == {"w2a2", "w3a3", "w4a4"} and "Digits" not in set(frame["proxy"])
    where = field.split(".")[0]
    assert len(problems) == 1 and problems[0].startswith(f"odd.json: {where}: ") and "not canonical" in problems[0]
    if where == "budget":
        assert "expected w<bits>a<bits> in lowercase without spaces" in problems[0]


def test_strict_loading_names_every_bad_file(tmp_path):
    results = _results(tmp_path)
    rec = _asga_s0()
    rec["metrics"]["top1"] = 200.0
    (results / "runs" / ASGA_S0).write_text(json.dumps(rec))
    (results / "runs" / "notes.json").write_text("not json")
    with pytest.raises(UserError) as err:
        lb.load_records(results / "runs", strict=True)
    text = str(err.value)
    assert text.startswith(f"2 bad run record(s) under {results / 'runs'}: {ASGA_S0}: metrics.top1")
    assert " | notes.json: not readable JSON" in text and text.endswith("fix or delete these files and run again")


def test_odd_files_are_one_problem_line_each_never_a_traceback(tmp_path):
    results = _results(tmp_path)
    runs = results / "runs"
    (runs / "binary.json").write_bytes(bytes(range(256)))
    (runs / "folder.json").mkdir()
    (runs / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (runs / "empty.json").write_text("")
    (runs / "list.json").write_text("[]")
    recs, problems = _both_loaders(results)
    assert len(recs) == 27
    assert problems == [
        "binary.json: not readable JSON (not UTF-8 text; a binary file?)",
        "deep.json: not readable JSON (nested too deeply)",
        "empty.json: not readable JSON (Expecting value: line 1 column 1 (char 0))",
        "folder.json: a directory, not a record file",
        "list.json: not a JSON object",
    ]
    for name in ("binary.json", "folder.json", "deep.json", "empty.json", "list.json"):
        with pytest.raises(UserError, match="is malformed"):
            RunRecord.load(runs / name)


def test_unreadable_file_and_folder_are_one_problem_line_each(tmp_path):
    results = _results(tmp_path)
    runs = results / "runs"
    locked = runs / "locked.json"
    locked.write_text("{}")
    hidden = runs / "hidden"
    hidden.mkdir()
    (hidden / "x.json").write_text("{}")
    locked.chmod(0)
    hidden.chmod(0)
    try:
        try:
            locked.read_bytes()
        except PermissionError:
            pass
        else:
            pytest.skip("chmod 000 does not stop this user reading (root)")
        recs, problems = _both_loaders(results)
        with pytest.raises(UserError, match="locked.json is malformed .not readable"):
            RunRecord.load(locked)
    finally:
        locked.chmod(0o644)
        hidden.chmod(0o755)
    assert len(recs) == 27
    assert problems == ["hidden/: folder not readable (Permission denied); records in it are left out",
                        "locked.json: not readable (Permission denied)"]


def test_load_results_explains_missing_empty_and_malformed(tmp_path):
    missing = lb.load_results(tmp_path / "nope")
    assert "does not exist" in missing.error and missing.error_kind == "missing" and missing.frame.empty
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    empty = lb.load_results(tmp_path / "empty")
    assert empty.error.startswith("No results") and lb.RESULTS_ENV in empty.error and empty.error_kind == "empty"
    only_bad = tmp_path / "bad" / "runs"
    only_bad.mkdir(parents=True)
    (only_bad / "x.json").write_text("{")
    bad = lb.load_results(tmp_path / "bad")
    assert "malformed" in bad.error and bad.error_kind == "malformed" and len(bad.problems) == 1


def test_load_results_falls_back_to_the_csv(frame, tmp_path):
    lb.write_leaderboard_csv(frame, tmp_path / "leaderboard.csv")
    res = lb.load_results(tmp_path)
    assert res.error is None and res.source.endswith("leaderboard.csv") and res.records == {}
    pd.testing.assert_frame_equal(res.frame, frame)


def test_results_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.delenv(lb.RESULTS_ENV, raising=False)
    assert lb.resolve_results_dir(tmp_path / "default") == tmp_path / "default"
    monkeypatch.setenv(lb.RESULTS_ENV, str(tmp_path / "other"))
    assert lb.resolve_results_dir(tmp_path / "default") == tmp_path / "other"


def test_fingerprint_changes_when_a_record_changes(tmp_path):
    shutil.copytree(SMALL, tmp_path / "r")
    before = lb.results_fingerprint(tmp_path / "r")
    path = next((tmp_path / "r" / "runs").rglob("*.json"))
    path.write_text(path.read_text() + " ")
    assert lb.results_fingerprint(tmp_path / "r") != before


def test_the_app_loads_every_suite_results_folder_inside_results(tmp_path):
    """results/extended/runs (another suite's results_dir) shows beside results/runs; aggregate stays per folder."""
    results = _results(tmp_path)
    rec = _asga_s0()
    rec.update(suite="extended", run_id="e0e0e0e0e0e0")
    nested = results / "extended" / "runs" / "extended" / "resnet20" / "w3a3" / "asga"
    nested.mkdir(parents=True)
    (nested / "digits-to-fashion-mnist-s0.json").write_text(json.dumps(rec))
    (results / "extended" / "runs" / "broken.json").write_text("{")
    (results / "figures-like").mkdir()  # a folder without runs/ is not a results folder
    assert lb.suite_results_dirs(results) == [results, results / "extended"]
    res = lb.load_results(results)
    assert res.frame.groupby("suite").size().to_dict() == {"default": 27, "extended": 1}
    assert "e0e0e0e0e0e0" in res.records and res.source == f"{results / 'runs'}, {results / 'extended' / 'runs'}"
    assert [p.split(":")[0] for p in res.problems] == ["extended/runs/broken.json"]
    assert len(lb.load_records(results / "runs")[0]) == 27  # the aggregate's loader reads one folder only
    before = lb.results_fingerprint(results)
    (nested / "digits-to-fashion-mnist-s0.json").write_text(json.dumps(rec, indent=1))
    assert lb.results_fingerprint(results) != before


# ------------------------------------------------------------------ filtering and ranking


def test_filter_frame(frame):
    digits = lb.filter_frame(frame, arch="resnet20", budget="w3a3", proxy=["digits"])
    assert set(digits["method"]) == {"asga", "asga-sam", "gmpq-asga", "gmpq", "edmips", "hawq", "uniform", "random"}
    assert (digits["status"] == "ok").all() and len(digits) == 17
    assert len(lb.filter_frame(frame, arch="resnet20", budget="w3a3", proxy="digits", include_failed=True)) == 18
    assert lb.filter_frame(frame, method=[]).empty


def test_ranks_means_and_ci_by_hand(ranked):
    order = ranked[(ranked["arch"] == "resnet20") & (ranked["budget"] == "w3a3")]
    assert list(zip(order["method"], order["rank"])) == [
        ("edmips-target", 1), ("asga", 2), ("asga", 3), ("asga-sam", 4), ("gmpq-asga", 5), ("gmpq", 6),
        ("edmips", 7), ("hawq", 8), ("uniform", 9), ("random", 10)]
    asga = _entry(ranked, "asga")
    assert asga["top1_mean"] == pytest.approx(89.0)
    assert asga["top1_std"] == pytest.approx(1.0)
    assert asga["top1_ci"] == pytest.approx(4.302652729749464 / math.sqrt(3))  # t(0.975, 2) * s / sqrt(n)
    assert asga["search_macs_processed"] == pytest.approx(2e12) and asga["search_wall_s"] == pytest.approx(100)
    assert asga["n_seeds"] == 3 and asga["seeds"] == "0,1,2" and asga["role"] == "proposed"
    assert _entry(ranked, "gmpq")["top1_mean"] == pytest.approx(87.25)
    one_seed = _entry(ranked, "asga", budget="w2a2")
    assert one_seed["n_seeds"] == 1 and pd.isna(one_seed["top1_ci"]) and pd.isna(one_seed["top1_std"])
    assert _entry(ranked, "asga-sam")["role"] == "ablation" and _entry(ranked, "hawq")["role"] == "baseline"


def test_failed_runs_count_in_status_but_not_in_statistics(frame):
    ranked = lb.rank_methods(lb.filter_frame(frame, include_failed=True))
    edmips = _entry(ranked, "edmips")
    assert edmips["status"] == "2 ok, 1 failed" and edmips["n_failed"] == 1 and edmips["n_seeds"] == 2
    assert edmips["top1_mean"] == pytest.approx(86.5) and edmips["rank"] == 7


def test_ties_share_a_rank_and_all_failed_entries_get_none(frame):
    rows = frame[(frame["arch"] == "resnet20") & (frame["budget"] == "w2a2")].copy()
    rows.loc[rows["method"] == "edmips", "top1_pct"] = 80.0  # tie with asga
    rows.loc[rows["method"] == "uniform", "status"] = "failed"
    ranked = lb.rank_methods(rows)
    assert dict(zip(ranked["method"], ranked["rank"].astype("object"))) == {"asga": 1, "edmips": 1, "uniform": pd.NA}
    assert ranked["method"].tolist()[-1] == "uniform"


def test_t_quantile_matches_tables():
    assert lb.t_quantile(0.95, 1) == pytest.approx(12.706204736)
    assert lb.t_quantile(0.95, 2) == pytest.approx(4.302652730)
    assert lb.t_quantile(0.95, 30) == pytest.approx(2.042272456)
    assert lb.t_quantile(0.99, 4) == pytest.approx(4.604094871)
    assert np.isnan(lb.t_quantile(0.95, 0))
    got = lb.t_quantile(0.95, np.array([[1, 2], [0, 30]]))
    assert got.shape == (2, 2) and np.isnan(got[1, 0]) and got[0, 1] == pytest.approx(4.302652730)


def test_t_quantile_matches_scipy():
    """The incomplete-beta inversion against scipy's stdtrit (the project computes it itself so the leaderboard
    need not import scipy.special before its first view)."""
    stdtrit = pytest.importorskip("scipy.special").stdtrit
    for conf in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999):
        for dof in [*range(1, 60), 0.5, 1.5, 2.7, 120, 1000, 1e5]:
            assert lb.t_quantile(conf, dof) == pytest.approx(stdtrit(dof, 0.5 + conf / 2), rel=1e-9), (conf, dof)


def test_rank_methods_on_empty_frame():
    assert lb.rank_methods(lb.records_to_frame([])).empty
    assert lb.efficiency_gains(lb.rank_methods(lb.records_to_frame([]))).empty


# ------------------------------------------------------------------ Pareto front and gains


def test_pareto_mask_by_hand():
    # (cost, accuracy): (2, 72) twice -> neither dominates the other; (3, 71) is dominated; NaN never on front
    mask = lb.pareto_mask([1, 2, 3, 2, np.nan], [70, 72, 71, 72, 99])
    assert mask.tolist() == [True, True, False, True, False]


def test_pareto_front_is_per_arch_across_budgets(ranked):
    front = lb.pareto_front(ranked)
    on = ranked[front]
    assert set(zip(on["arch"], on["budget"], on["method"], on["proxy"])) == {
        ("mobilenet_v2", "w4a4", "asga", "digits"), ("mobilenet_v2", "w4a4", "gmpq", "digits"),
        ("resnet20", "w2a2", "asga", "digits"), ("resnet20", "w3a3", "gmpq-asga", "digits"),
        ("resnet20", "w3a3", "edmips-target", "fashion-mnist")}


def test_efficiency_gain_definition():
    assert lb.efficiency_gain(5.0, 2.0) == pytest.approx(1.5)
    assert lb.efficiency_gain(1.0, 2.0) == pytest.approx(-0.5)
    assert math.isnan(lb.efficiency_gain(1.0, 0.0)) and math.isnan(lb.efficiency_gain(math.nan, 1.0))


def test_efficiency_gains_by_hand(ranked):
    gains = lb.efficiency_gains(ranked)
    key = gains.set_index(["arch", "budget", "method", "proxy", "baseline", "baseline_proxy"])
    g = key.loc[("resnet20", "w3a3", "asga", "digits", "gmpq", "digits")]
    assert (g["gain_macs"], g["gain_wall_s"], g["top1_diff_pp"]) == pytest.approx((1.0, 1.0, 1.75))
    g = key.loc[("resnet20", "w3a3", "asga", "digits", "edmips-target", "fashion-mnist")]
    assert (g["gain_macs"], g["top1_diff_pp"]) == pytest.approx((1.5, -0.5))
    g = key.loc[("resnet20", "w3a3", "gmpq-asga", "digits", "gmpq", "digits")]
    assert (g["gain_macs"], g["top1_diff_pp"]) == pytest.approx((4 / 3 - 1, 0.25))
    g = key.loc[("resnet20", "w3a3", "asga", "digits", "uniform", "digits")]
    assert g["gain_macs"] == pytest.approx(-1.0) and g["baseline_role"] == "control"
    g = key.loc[("mobilenet_v2", "w4a4", "asga", "digits", "gmpq", "digits")]
    assert (g["gain_macs"], g["gain_wall_s"], g["top1_diff_pp"]) == pytest.approx((0.5, 0.5, 1.0))
    # proposed methods are not compared with each other; every w3a3 proposed entry meets the 7 others
    proposed = set(ranked.loc[ranked["role"] == "proposed", "method"])
    assert proposed >= {"asga", "gmpq-asga"} and not gains["baseline"].isin(proposed).any()
    assert len(gains[(gains["arch"] == "resnet20") & (gains["budget"] == "w3a3")]) == 3 * 7
    # the fixtures predate the teacher fields: missing teacher cost counts 0, so the gains agree
    assert np.allclose(gains["gain_macs_with_teacher"], gains["gain_macs"], equal_nan=True)


def test_gain_to_settle_by_hand(ranked):
    settled = ranked.copy()
    settled["search_macs_to_settle"] = settled["method"].map({"asga": 0.5e12, "gmpq": 3e12, "edmips": 1e12})
    key = lb.efficiency_gains(settled).set_index(["arch", "budget", "method", "proxy", "baseline", "baseline_proxy"])
    g = key.loc[("resnet20", "w3a3", "asga", "digits", "gmpq", "digits")]
    assert (g["gain_macs"], g["gain_macs_to_settle"]) == pytest.approx((1.0, 3e12 / 0.5e12 - 1))
    assert key.loc[("resnet20", "w3a3", "asga", "digits", "edmips", "digits")]["gain_macs_to_settle"] == pytest.approx(1.0)
    # a one-shot baseline (no settle point) gives no settle gain
    assert math.isnan(key.loc[("resnet20", "w3a3", "asga", "digits", "hawq", "digits")]["gain_macs_to_settle"])


def test_gain_with_teacher_adds_the_proxy_teacher_training(ranked):
    """gmpq and gmpq-asga train an FP teacher on the proxy first; asga does not."""
    with_teacher = ranked.copy()
    with_teacher["teacher_macs"] = np.where(with_teacher["method"].isin(["gmpq", "gmpq-asga"]), 2e12, 0.0)
    key = lb.efficiency_gains(with_teacher).set_index(["arch", "budget", "method", "proxy", "baseline", "baseline_proxy"])
    g = key.loc[("resnet20", "w3a3", "asga", "digits", "gmpq", "digits")]
    assert (g["gain_macs"], g["gain_macs_with_teacher"]) == pytest.approx((1.0, (4e12 + 2e12) / 2e12 - 1))
    g = key.loc[("resnet20", "w3a3", "gmpq-asga", "digits", "gmpq", "digits")]
    assert g["gain_macs_with_teacher"] == pytest.approx((4e12 + 2e12) / (3e12 + 2e12) - 1)
    g = key.loc[("resnet20", "w3a3", "gmpq-asga", "digits", "edmips", "digits")]
    assert g["gain_macs_with_teacher"] == pytest.approx(1e12 / (3e12 + 2e12) - 1)


# ------------------------------------------------------------------ summary.json


def test_summary_by_hand_and_json_safe(frame):
    s = lb.summary(frame)
    cell = s["groups"]["default"]["resnet20"]["fashion-mnist"]["w3a3"]
    assert cell["budget_bitops_g"] == pytest.approx(18 * 1e7 * 9 / 1e9)
    asga = cell["entries"]["asga@digits"]
    assert (asga["rank"], asga["n_seeds"], asga["top1_mean"], asga["top1_std"]) == (3, 3, 89.0, 1.0)
    assert cell["entries"]["edmips@digits"]["n_failed"] == 1
    gain = dict(cell["gains"]["asga@digits"]["gmpq@digits"])
    assert gain.pop("gain_macs_to_settle") is None  # the fixtures predate the field: no NaN in the JSON
    assert gain == pytest.approx({"gain_macs": 1.0, "gain_wall_s": 1.0, "gain_macs_with_teacher": 1.0,
                                  "top1_diff_pp": 1.75})
    assert cell["gains"]["gmpq-asga@digits"]["edmips-target@fashion-mnist"]["gain_macs"] == pytest.approx(2 / 3)
    one = s["groups"]["default"]["resnet20"]["fashion-mnist"]["w2a2"]["entries"]["asga@digits"]
    assert one["top1_ci"] is None
    text = json.dumps(s, allow_nan=False, sort_keys=True)
    assert text == json.dumps(lb.summary(frame.sample(frac=1, random_state=1)), allow_nan=False, sort_keys=True)


# ------------------------------------------------------------------ policies and commands


def test_policy_frame_in_module_order_and_wide_table(records):
    rec = {"method": "m", "proxy": "p", "seed": 0,
           "layers": {"features.10.conv": {"w": 2, "a": 3}, "features.2.conv": {"w": 4, "a": 4},
                      "features.1.conv": {"w": 3, "a": 2}}}
    pol = lb.policy_frame([rec])
    assert pol["layer"].tolist() == ["features.1.conv", "features.2.conv", "features.10.conv"]
    assert pol["layer_index"].tolist() == [0, 1, 2]
    wide = lb.policy_table(pol)
    assert wide["m@p"].tolist() == ["3/2", "4/4", "2/3"]
    full = lb.policy_frame([r for r in records if r["arch"] == "resnet20" and r["budget"]["name"] == "w3a3"])
    assert full.groupby("entry")["layer"].nunique().eq(18).all()
    assert full[full["entry"] == "uniform@digits"][["w", "a"]].eq(3).all().all()


def test_reproduce_commands(frame):
    """A record of a suite whose file is here: the search line is the workflow's own request for that cell (minus
    its state folder), the Snakemake line re-creates the record with that suite's config file."""
    import yaml

    from mpqbench import runs
    from mpqbench.config import load_suite
    from mpqbench.plugins import resolve_suite

    row = frame[(frame["method"] == "asga-sam") & (frame["seed"] == 0) & (frame["arch"] == "resnet20")].iloc[0]
    cmds = lb.reproduce_commands(row)
    suite = resolve_suite(load_suite(yaml.safe_load((ROOT / "config" / "config.yaml").read_text())))
    want = runs.search_request(suite, arch="resnet20", budget="w3a3", method="asga-sam", proxy="digits", seed=0,
                               out="policy.json")
    want.work_dir, want.progress = None, True
    assert cmds["search"] == want.command_line()
    words = shlex.split(cmds["search"])
    assert words[words.index("--label") + 1] == "asga-sam" and "--work-dir" not in words
    assert cmds["snakemake"] == ("snakemake --cores 2 --configfile config/config.yaml --forcerun search -- "
                                 + row["record_path"])
    assert (SMALL / row["record_path"].removeprefix("results/")).is_file()
    loop = lb.entry_commands(frame[(frame["method"] == "gmpq") & (frame["arch"] == "resnet20")])
    assert loop["search"].startswith("for s in 0 1; do mpqbench search --method gmpq ")
    assert ' --seed "$s" ' in loop["search"] and ' --out "policy-s$s.json"' in loop["search"]
    assert loop["search"].endswith("; done") and loop["snakemake"].count("results/runs/") == 2


def test_reproduce_command_quotes_odd_values():
    row = {"suite": "adhoc", "method": "m", "base_method": "m", "arch": "a", "proxy": "p", "target": "t", "budget": "w3a3",
           "seed": 0, "search_hparams": json.dumps({"note": "two words"}), "record_path": "results/runs/x.json"}
    assert """--hp 'note="two words"'""" in lb.reproduce_commands(row)["search"]
    # a value that starts with $ is quoted like any other (it used to be left bare)
    assert "--out '$HOME/p.json'" in lb.reproduce_commands(row, out="$HOME/p.json")["search"]
    assert "--seed '$(id)'" in lb.reproduce_commands(row, seed="$(id)")["search"]


HOSTILE = {
    "method": "$(touch {m}/method)",
    "suite": "s;touch {m}/suite",
    "proxy": "`touch {m}/proxy`",
    "hparams": {"note": "a'b\"c; $(touch {m}/hp) `touch {m}/hp2` $HOME", "k$(touch {m}/key)": "it's"},
}


def _hostile_records(marker: Path) -> list[dict]:
    recs, _ = lb.load_records(SMALL / "runs")
    base = next(r for r in recs if r["method"] == "asga" and r["proxy"] == "digits" and r["budget"]["name"] == "w3a3"
                and r["seed"] == 0)
    out = []
    for seed in (0, 1):
        rec = json.loads(json.dumps(base))
        rec.update(method=HOSTILE["method"].format(m=marker), base_method="asga", suite=HOSTILE["suite"].format(m=marker),
                   proxy=HOSTILE["proxy"].format(m=marker), seed=seed, run_id=f"hostile{seed}")
        rec["search"]["hparams"] = {k.format(m=marker): v.format(m=marker) for k, v in HOSTILE["hparams"].items()}
        rec["search"]["teacher_macs"] = 1e12  # the teacher path is made of suite, arch and proxy too
        out.append(rec)
    return out


def _run_with_printing_programs(line: str, cwd: Path) -> list[str]:
    """Run a reproduce line through bash with `mpqbench` and `snakemake` as functions that print their
    arguments one per line (nothing else would run); return the printed words."""
    script = 'mpqbench() { printf "%s\\n" "$@"; }; snakemake() { printf "%s\\n" "$@"; }; ' + line
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"], "HOME": "/nonexistent-home"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_hostile_record_values_reach_the_shell_as_literal_words(tmp_path):
    """Issue 14: method, label, suite, proxy and hyper-parameters with $(...), backticks, ; and quotes
    give lines that parse, pass every value literally, and execute nothing."""
    marker = tmp_path / "marker"
    marker.mkdir()
    recs = _hostile_records(marker)
    frame = lb.records_to_frame(recs)
    method, suite, proxy = (HOSTILE[k].format(m=marker) for k in ("method", "suite", "proxy"))
    hps = {k.format(m=marker): v.format(m=marker) for k, v in HOSTILE["hparams"].items()}
    single = lb.reproduce_commands(frame.iloc[0])
    loop = lb.entry_commands(frame)
    lines = [single["search"], single["snakemake"], loop["search"], loop["snakemake"]]
    for line in lines:
        check = subprocess.run(["bash", "-n", "-c", line], capture_output=True, text=True)
        assert check.returncode == 0, (line, check.stderr)
        assert shlex.split(line)  # POSIX shell words
    words = shlex.split(single["search"])
    assert words[words.index("--label") + 1] == method and words[words.index("--proxy") + 1] == proxy
    assert words[words.index("--teacher") + 1] == f"work/{suite}/teacher/resnet20-{proxy}.pt"
    assert sorted(w for i, w in enumerate(words) if i and words[i - 1] == "--hp") == sorted(
        f"{k}={json.dumps(v)}" for k, v in hps.items())  # each value as JSON, as the CLI reads --hp
    record_path = frame.iloc[0]["record_path"]
    sm = shlex.split(single["snakemake"])
    assert sm[sm.index("--") + 1:] == [record_path] and method in record_path and suite in record_path

    # executed (with printing stand-ins for the programs): the same literal words, and no file appears
    printed = _run_with_printing_programs(single["search"], tmp_path)
    assert printed == words[1:]
    printed = _run_with_printing_programs(loop["search"], tmp_path)
    assert printed.count("--seed") == 2 and printed[printed.index("--seed") + 1] == "0"
    assert "policy-s0.json" in printed and "policy-s1.json" in printed and printed.count(method) == 2
    printed = _run_with_printing_programs(loop["snakemake"], tmp_path)
    assert printed[printed.index("--") + 1:] == list(frame["record_path"])
    for line in lines:  # and through `true`, the harmless program the line would otherwise start
        subprocess.run(["bash", "-c", line.replace("mpqbench search", "true", 1).replace("snakemake", "true", 1)],
                       cwd=tmp_path, capture_output=True, timeout=30, check=True)
    assert list(marker.iterdir()) == []
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------ published numbers


def test_published_csv_is_sourced_and_separate():
    pub = lb.load_published(ROOT / "baselines" / "published.csv")
    assert list(pub.columns) == lb.PUBLISHED_COLUMNS and len(pub) >= 20
    # a pinned repository file, or the paper's own page (arXiv version, CVF open access)
    assert pub["source_url"].str.match(r"https://(github\.com/|arxiv\.org/abs/|openaccess\.thecvf\.com/)").all()
    assert (pub["source_table"].str.len() > 0).all()
    assert pub["top1"].between(50, 100).all()
    assert not pub["method"].isin(["asga", "gmpq-asga"]).any()  # nothing we could not source
    edmips = pub[(pub["method"] == "edmips") & (pub["arch"] == "resnet18")]
    assert edmips["top1"].tolist() == [65.9]


def test_load_published_rejects_bad_files(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        lb.load_published(tmp_path / "missing.csv")
    (tmp_path / "p.csv").write_text("method,arch\nx,y\n")
    with pytest.raises(UserError, match="lacks column"):
        lb.load_published(tmp_path / "p.csv")


def test_reproduce_command_restates_every_recorded_search_setting():
    """A subset-proxy, teacher-using run: the command parses with the real CLI into the recorded settings."""
    import shlex

    from mpqbench.cli import build_parser

    row = {"suite": "default", "method": "gmpq-x", "base_method": "gmpq", "arch": "resnet20",
           "proxy": "fashion-mnist-subset", "proxy_dataset": "fashion-mnist", "proxy_subset": 1437,
           "proxy_input_size": 28, "target": "fashion-mnist", "target_input_size": 28, "budget": "w2.5a2.5",
           "seed": 2, "width": 0.5, "w_candidates": "2,3,4", "a_candidates": "3,4", "teacher_macs": 1e12,
           "search_hparams": json.dumps({"method": "gmpq", "epochs": 6, "lr_alpha": 0.5}),
           "record_path": "results/runs/x.json"}
    cmd = lb.reproduce_commands(row)["search"]
    args = build_parser().parse_args(shlex.split(cmd)[1:])
    assert (args.method, args.label, args.arch, args.proxy, args.proxy_label, args.proxy_subset) == (
        "gmpq", "gmpq-x", "resnet20", "fashion-mnist", "fashion-mnist-subset", 1437)
    assert (args.proxy_input_size, args.target, args.target_input_size, args.budget, args.seed, args.width) == (
        28, "fashion-mnist", 28, "w2.5a2.5", 2, 0.5)
    assert (list(args.w_candidates), list(args.a_candidates)) == ([2, 3, 4], [3, 4])
    assert dict(args.hp) == {"epochs": 6, "lr_alpha": 0.5}
    assert args.teacher == "work/default/teacher/resnet20-fashion-mnist-subset.pt"
    # a row without the newer fields (older records) still gives a valid, shorter command
    old = {k: v for k, v in row.items() if k not in ("proxy_dataset", "proxy_subset", "proxy_input_size",
                                                    "target_input_size", "width", "w_candidates",
                                                    "a_candidates", "teacher_macs")}
    args = build_parser().parse_args(shlex.split(lb.reproduce_commands(old)["search"])[1:])
    assert (args.proxy, args.proxy_label, args.teacher) == ("fashion-mnist-subset", None, None)


# ------------------------------------------------------------------ budget window


def test_budget_used_from_the_record_or_computed(frame):
    # older records (results_small) lack achieved.budget_used: searchable BitOPs / budget
    assert np.allclose(frame["budget_used"].astype(float), frame["bitops_g_searchable"].astype(float)
                       / frame["budget_bitops_g"].astype(float))
    assert (frame["budget_floor"] == 0.85).all() and frame["budget_matched"].all()
    assert (frame["search_length"] == 1.0).all() and (frame["search_curve"] == frame["method"]).all()
    assert (frame["search_precision"] == "fp32").all() and (frame["finetune_precision"] == "fp32").all()
    recs, _ = lb.load_records(CURVES / "runs")
    rec = next(r for r in recs if r["method"] == "asga" and r["seed"] == 1 and r["budget"]["name"] == "w3a3")
    assert rec["achieved"]["budget_used"] == pytest.approx(159 / 162)  # one of 18 W3A3 layers at A2
    row = lb.records_to_frame([rec]).iloc[0]
    assert row["budget_used"] == pytest.approx(159 / 162) and row["budget_floor"] == 0.9 and row["budget_matched"]
    assert (row["search_length"], row["search_curve"], row["search_extraction"]) == (1.0, "asga", "ilp")
    # the record's own value wins over the computed one; no floor in the record = 0.9
    odd = json.loads(json.dumps(rec))
    odd["achieved"]["budget_used"] = 0.5
    del odd["search"]["budget_floor"]
    row = lb.records_to_frame([odd]).iloc[0]
    assert row["budget_used"] == 0.5 and row["budget_floor"] == lb.DEFAULT_BUDGET_FLOOR and not row["budget_matched"]


@pytest.mark.parametrize("used, matched", [(0.9, True), (0.9 - 1e-10, True), (0.9 - 1e-8, False), (1.0, True),
                                           (1.0 + 1e-10, True), (1.0 + 1e-8, False), (0.64, False), (1.3, False)])
def test_budget_window_edges(used, matched):
    recs, _ = lb.load_records(CURVES / "runs")
    rec = json.loads(json.dumps(recs[0]))
    rec["achieved"]["budget_used"] = used
    assert bool(lb.records_to_frame([rec]).iloc[0]["budget_matched"]) is matched


@pytest.fixture(scope="module")
def curves() -> pd.DataFrame:
    recs, problems = lb.load_records(CURVES / "runs")
    assert problems == [] and len(recs) == 45
    return lb.records_to_frame(recs)


def test_unmatched_and_other_length_entries_are_listed_but_not_ranked(curves):
    ranked = lb.rank_methods(curves)
    w3 = ranked[ranked["budget"] == "w3a3"]
    assert list(zip(w3["method"], w3["rank"].astype(object)))[:5] == [
        ("asga-rhomin", 1), ("asga", 2), ("edmips-target", 3), ("uniform", 4), ("gmpq-asga", 5)]
    argmax = _entry(ranked, "edmips-argmax")
    assert pd.isna(argmax["rank"]) and argmax["budget_used"] == pytest.approx(4 / 9) and not argmax["budget_matched"]
    assert argmax["unranked"] == "not budget-matched (budget used 44.4%, window [0.9, 1])"
    point = _entry(ranked, "edmips-target-len2", proxy="fashion-mnist")
    assert pd.isna(point["rank"]) and point["unranked"] == "search length 2x: a point of the edmips-target cost curve"
    assert _entry(ranked, "asga")["budget_used"] == pytest.approx((1 + 159 / 162 + 156 / 162) / 3)
    # include_unmatched: the argmax entry competes (and wins); curve points still do not
    every = lb.rank_methods(curves, include_unmatched=True)
    assert _entry(every, "edmips-argmax")["rank"] == 1 and _entry(every, "asga-rhomin")["rank"] == 2
    assert pd.isna(_entry(every, "asga-len2")["rank"])
    # fixed-length gains leave out both kinds unless asked
    gains = lb.efficiency_gains(ranked)
    assert "edmips-argmax" not in set(gains["baseline"]) and not gains["baseline"].str.contains("len").any()
    assert "edmips-argmax" in set(lb.efficiency_gains(every, include_unmatched=True)["baseline"])


# ------------------------------------------------------------------ statistical ties by paired differences


def test_paired_ties_with_three_seeds_by_hand(curves):
    ranked = lb.rank_methods(curves)
    best = _entry(ranked, "asga-rhomin")
    assert best["tied_with_best"] and best["paired_diff_pp"] == 0 and best["paired_n"] == 3
    # uniform - best per seed: 88-89.5, 86-90, 85.5-90.5 = -1.5, -4, -5: mean -3.5, sd sqrt(3.25),
    # half-width t(0.975, 2) = 4.303 x sqrt(3.25) / sqrt(3) = 4.478 > 3.5: tied
    uniform = _entry(ranked, "uniform")
    assert uniform["paired_diff_pp"] == pytest.approx(-3.5)
    assert uniform["paired_diff_ci"] == pytest.approx(4.302652729749464 * math.sqrt(3.25) / math.sqrt(3))
    assert uniform["tied_with_best"] and uniform["paired_n"] == 3
    # its unpaired interval (± 3.29) overlaps the best's (± 1.24) less than the paired test decides; asga is
    # 2 points below in every seed: sd 0, half-width 0, not tied although the intervals nearly touch
    asga = _entry(ranked, "asga")
    assert (asga["paired_diff_pp"], asga["paired_diff_ci"], asga["tied_with_best"]) == (-2.0, 0.0, False)
    assert pd.isna(_entry(ranked, "edmips-argmax")["tied_with_best"])  # unranked: not compared


def test_paired_ties_with_two_seeds_and_missing_pairs(ranked, frame):
    # results_small w3a3: best edmips-target (89.5, 89.5) on seeds 0, 1
    asga = _entry(ranked, "asga")  # seeds 0, 1 in common: 88-89.5, 89-89.5 -> -1.5, -0.5
    t1 = 12.706204736174707
    assert (asga["paired_n"], asga["paired_diff_pp"]) == (2, pytest.approx(-1.0))
    assert asga["paired_diff_ci"] == pytest.approx(t1 * math.sqrt(0.5) / math.sqrt(2)) and asga["tied_with_best"]
    uniform = _entry(ranked, "uniform")  # 84 - 89.5 on both seeds: sd 0 -> not tied
    assert (uniform["paired_diff_pp"], uniform["paired_diff_ci"], uniform["tied_with_best"]) == (-5.5, 0.0, False)
    assert pd.isna(_entry(ranked, "edmips", budget="w2a2")["tied_with_best"])  # one seed: NA
    # a seed the best lacks does not pair: one common seed -> NA, with its single difference
    rows = frame[(frame["arch"] == "resnet20") & (frame["budget"] == "w3a3")].copy()
    rows = rows[~((rows["method"] == "gmpq") & (rows["seed"] == 1))]
    rows.loc[(rows["method"] == "gmpq"), "seed"] = 2
    r = lb.rank_methods(rows)
    gmpq = _entry(r, "gmpq")
    assert gmpq["paired_n"] == 0 and pd.isna(gmpq["tied_with_best"]) and pd.isna(gmpq["paired_diff_pp"])
    assert lb.paired_difference({0: 1.0, 1: 2.0}, {1: 1.5, 2: 0.0}) == (0.5, pytest.approx(math.nan, nan_ok=True), 1)


# ------------------------------------------------------------------ efficiency at equal accuracy


def test_isotonic_pools_violators_by_hand():
    assert lb.isotonic_increasing([1, 2, 4, 8], [85, 87.5, 87, 89]).tolist() == [85, 87.25, 87.25, 89]
    # weights: (3 x 87.5 + 1 x 87) / 4; a violation that spans three points; input order is kept
    assert lb.isotonic_increasing([1, 2, 4], [85, 87.5, 87], [1, 3, 1]).tolist() == [85, 87.375, 87.375]
    assert lb.isotonic_increasing([3, 1, 2], [1, 3, 2]).tolist() == [2, 2, 2]
    assert lb.isotonic_increasing([1, 1, 2], [5, 3, 6]).tolist() == [4, 4, 6]  # equal costs share one value


def test_isotonic_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.isotonic")
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(2, 8))
        x, y, w = np.sort(rng.uniform(0, 10, n)), rng.normal(0, 1, n), rng.uniform(0.5, 3, n)
        ours = lb.isotonic_increasing(x, y, w)
        theirs = sklearn.IsotonicRegression().fit(x, y, sample_weight=w).predict(x)
        assert np.allclose(ours, theirs)
        rows = lb._isotonic_rows(y[None, :], w[None, :])[0]  # the vectorised form used by the bootstrap
        assert np.allclose(rows, theirs)


def test_equal_accuracy_gain_on_synthetic_curves():
    cost, top1 = [1.0, 2.0, 4.0, 8.0], [85.0, 87.5, 87.0, 89.0]
    # crossing after pooling: 87.25 at 4, 89 at 8 -> 88 at 4 + 0.75 / 1.75 x 4
    gain, bound = lb.equal_accuracy_gain(cost, top1, 1.0, 88.0)
    assert bound is None and gain == pytest.approx(4 + 0.75 / 1.75 * 4 - 1)
    # pooled plateau: 87.25 is first reached at cost 2 (not 4)
    assert lb.equal_accuracy_gain(cost, top1, 1.0, 87.25) == (pytest.approx(1.0), None)
    # no crossing: above the reference's longest search, below its shortest
    assert lb.equal_accuracy_gain(cost, top1, 1.0, 90.0) == (pytest.approx(7.0), ">")
    assert lb.equal_accuracy_gain(cost, top1, 3.0, 84.5) == (pytest.approx(1 / 3 - 1), "<")
    assert lb.equal_accuracy_gain(cost, top1, 3.0, 85.0) == (pytest.approx(1 / 3 - 1), "<")  # reached exactly
    assert math.isnan(lb.equal_accuracy_gain(cost, top1, 0.0, 88.0)[0])  # zero-cost entry: undefined
    assert lb.cost_at_accuracy([1.0], [80.0], 79.0) == (1.0, "<") and lb.cost_at_accuracy([1.0], [80.0], 81.0) == (1.0, ">")


def test_equal_accuracy_gains_by_hand(curves):
    res = {(r["budget"], r["method"]): r for r in lb.equal_accuracy_gains(curves)}
    assert sorted(res) == [("w2a2", "asga"), ("w3a3", "asga"), ("w3a3", "asga-rhomin"), ("w3a3", "gmpq-asga")]
    asga = res[("w3a3", "asga")]
    assert asga["reference"] == "edmips-target@fashion-mnist"
    assert (asga["value"], asga["bound"]) == (pytest.approx(4 + 0.75 / 1.75 * 4 - 1), None)  # C_ref 5.714 T MACs
    assert asga["macs"]["reference_cost_at_equal_accuracy"] == pytest.approx((4 + 0.75 / 1.75 * 4) * 1e12)
    assert asga["wall_s"]["value"] == pytest.approx((200 + 0.75 / 1.75 * 200) / 60 - 1)
    # beside it, the fixed-length gain over the reference's default-length entry: 4 / 1 - 1, 200 / 60 - 1
    assert asga["fixed_length_gain"] == {"macs": pytest.approx(3.0), "wall_s": pytest.approx(200 / 60 - 1)}
    # bootstrap over 3 seeds: each all-one-seed resample has probability 1/27 = 3.7 % > 2.5 %, and they are
    # the extremes (checked below by enumerating every resample): all seed 2 -> reference fit 86, 87.75,
    # 87.75, 90 and asga 88.5 -> 4 + 0.75 / 2.25 x 4 = 5.333 T MACs; all seed 0 -> 84, 86.75, 86.75, 88 and
    # 87.5 -> 4 + 0.75 / 1.25 x 4 = 6.4 T MACs
    assert (asga["ci_low"], asga["ci_high"]) == (pytest.approx(5 + 1 / 3 - 1), pytest.approx(5.4))
    import itertools
    per_seed = {row[1]: row[-1] for row in _curves_table()}  # label -> top-1 of seeds 0, 1, 2
    ref = ["edmips-target-len0.25", "edmips-target-len0.5", "edmips-target", "edmips-target-len2"]
    seen = []
    for draw in itertools.combinations_with_replacement(range(3), 3):
        y = [np.mean([per_seed[m][s] for s in draw]) for m in ref]
        seen.append(lb.equal_accuracy_gain([1, 2, 4, 8], y, 1.0, np.mean([per_seed["asga"][s] for s in draw]))[0])
    assert min(seen) == pytest.approx(asga["ci_low"]) and max(seen) == pytest.approx(asga["ci_high"])
    assert asga["bootstrap"] == {"n_boot": 2000, "rng_seed": 0, "seeds": [0, 1, 2], "confidence": 0.95}
    assert asga["macs"]["bootstrap"] == {"resamples": 2000, "censored_below": 0, "censored_above": 0}
    # the curve points it was read from
    refc = asga["curves"]["reference"]
    assert [p["length"] for p in refc] == [0.25, 0.5, 1.0, 2.0] and [p["macs"] for p in refc] == [1e12, 2e12, 4e12, 8e12]
    assert [p["top1_mean"] for p in refc] == [85.0, 87.5, 87.0, 89.0]
    assert [p["top1_fit"] for p in refc] == [85.0, 87.25, 87.25, 89.0]
    assert refc[0]["top1_ci"] == pytest.approx(4.302652729749464 / math.sqrt(3)) and refc[0]["n_seeds"] == 3
    assert [p["method"] for p in asga["curves"]["proposed"]] == ["asga-len0.5", "asga", "asga-len2"]
    # no crossing either way: a bound, and an interval that is conservative on the censored side
    rho = res[("w3a3", "asga-rhomin")]
    assert (rho["value"], rho["bound"], rho["ci_low"], rho["ci_high"]) == (pytest.approx(7.0), ">", pytest.approx(7.0), None)
    assert rho["macs"]["bootstrap"]["censored_above"] == 2000
    gmpq = res[("w3a3", "gmpq-asga")]
    assert (gmpq["value"], gmpq["bound"], gmpq["ci_low"]) == (pytest.approx(-2 / 3), "<", -1.0)
    assert gmpq["ci_high"] == pytest.approx(-2 / 3)
    # w2a2: fit 79, 81 at 1, 2 T MACs; asga 80.5 at 0.5 T MACs -> C_ref 1.75 T MACs, gain 2.5
    assert res[("w2a2", "asga")]["value"] == pytest.approx(2.5)
    # the argmax entry is not budget-matched: never a proposed entry nor a point; included on request
    assert lb.equal_accuracy_gains(curves, methods=["edmips-argmax"]) == []
    got = lb.equal_accuracy_gains(curves, methods=["edmips-argmax"], include_unmatched=True)
    assert [(g["method"], g["bound"]) for g in got] == [("edmips-argmax", ">")]


def _curves_table():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return [row for row in mod.CURVES if row[0] == "w3a3"]


def test_equal_accuracy_bootstrap_is_deterministic_and_drops_missing_seeds(curves):
    a = lb.equal_accuracy_gains(curves)
    b = lb.equal_accuracy_gains(curves.sample(frac=1, random_state=4))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    # a reference point without seed 2 (failed run): the point estimate uses its two seeds (len2 mean
    # (88 + 89) / 2 = 88.5, weight 2 -> fit 85, 87.25, 87.25, 88.5 -> 88 at 4 + 0.75 / 1.25 x 4 = 6.4);
    # in a resample, that point's top-1 is the mean over the drawn seeds it has (dropped when it has none),
    # so draws heavy in seed 2 raise asga but not the reference's top: they are censored above
    holed = curves[~((curves["method"] == "edmips-target-len2") & (curves["seed"] == 2))]
    asga = next(r for r in lb.equal_accuracy_gains(holed) if r["method"] == "asga" and r["budget"] == "w3a3")
    assert asga["value"] == pytest.approx(5.4) and asga["bound"] is None
    assert asga["ci_low"] <= asga["value"] and asga["ci_high"] is None
    # the censored share against an exact enumeration of the 27 equally likely ordered draws
    import itertools
    per_seed = {row[1]: dict(enumerate(row[-1])) for row in _curves_table()}
    del per_seed["edmips-target-len2"][2]
    ref = ["edmips-target-len0.25", "edmips-target-len0.5", "edmips-target", "edmips-target-len2"]
    censored = 0
    for draw in itertools.product(range(3), repeat=3):
        have = [[per_seed[m][s] for s in draw if s in per_seed[m]] for m in ref]
        cost = [c for c, h in zip([1, 2, 4, 8], have) if h]
        y = [np.mean(h) for h in have if h]
        w = [len(h) for h in have if h]
        censored += lb.equal_accuracy_gain(cost, y, 1.0, np.mean([per_seed["asga"][s] for s in draw]), weights=w)[1] == ">"
    # (0, 2, 2) in any order: len2 88 < asga 88.17; (2, 2, 2): len2 dropped, the top 87.75 < asga 88.5
    assert censored == 4
    assert asga["macs"]["bootstrap"]["censored_above"] / 2000 == pytest.approx(censored / 27, abs=0.03)
    # one seed only: a value, no interval
    one = lb.equal_accuracy_gains(curves[curves["seed"] == 0])
    assert all(r["ci_low"] is None and r["ci_high"] is None and r["bootstrap"]["n_boot"] == 0 for r in one)


def test_curve_points(curves):
    pts = lb.curve_points(curves)
    ref = pts[(pts["budget"] == "w3a3") & (pts["curve"] == "edmips-target")]
    assert ref["length"].tolist() == [0.25, 0.5, 1.0, 2.0] and (ref["n_points"] == 4).all()
    assert "edmips-argmax" not in set(pts["method"])
    assert "edmips-argmax" in set(lb.curve_points(curves, include_unmatched=True)["method"])


def test_format_gain():
    assert lb.format_gain(4.714, None, 4.333, 5.4) == "+471% [+433%, +540%]"
    assert lb.format_gain(7.0, ">", 7.0, None) == "> +700% [+700%, +∞]"
    assert lb.format_gain(float("nan"), None) == "n/a" and lb.format_gain(None, None) == "n/a"
    assert lb.format_gain(-2 / 3, "<", -1.0, -2 / 3) == "< -67% [-100%, -67%]"


def test_summary_carries_budget_ties_and_equal_accuracy(curves):
    s = lb.summary(curves)
    cell = s["groups"]["default"]["resnet20"]["fashion-mnist"]["w3a3"]
    asga = cell["entries"]["asga@digits"]
    assert (asga["rank"], asga["tied_with_best"], asga["paired_diff_pp"], asga["budget_matched"]) == (2, False, -2.0, True)
    assert asga["budget_used"] == pytest.approx((1 + 159 / 162 + 156 / 162) / 3) and asga["top1_ci"] == pytest.approx(
        4.302652729749464 * 0.5 / math.sqrt(3))
    argmax = cell["entries"]["edmips-argmax@digits"]
    assert argmax["rank"] is None and argmax["budget_matched"] is False and "not budget-matched" in argmax["unranked"]
    assert cell["entries"]["edmips-target-len2@fashion-mnist"]["search_length"] == 2.0
    eq = cell["gain_at_equal_accuracy"]["asga@digits"]
    assert eq["value"] == pytest.approx(4 + 0.75 / 1.75 * 4 - 1) and eq["reference"] == "edmips-target@fashion-mnist"
    assert len(eq["curves"]["reference"]) == 4 and set(eq["curves"]["reference"][0]) == {
        "method", "length", "macs", "wall_s", "top1_mean", "top1_ci", "n_seeds", "top1_fit"}
    # the fixed-length gain stays beside it: 4 T MACs / 1 T MACs - 1
    assert cell["gains"]["asga@digits"]["edmips-target@fashion-mnist"]["gain_macs"] == pytest.approx(3.0)
    assert "edmips-argmax@digits" not in cell["gains"]["asga@digits"]
    assert "fixed-length" in s["conventions"]["gain"] and "isotonic" in s["conventions"]["gain_at_equal_accuracy"]
    text = json.dumps(s, allow_nan=False, sort_keys=True)
    assert text == json.dumps(lb.summary(curves.sample(frac=1, random_state=2)), allow_nan=False, sort_keys=True)
    every = lb.summary(curves, include_unmatched=True)["groups"]["default"]["resnet20"]["fashion-mnist"]["w3a3"]
    assert every["entries"]["edmips-argmax@digits"]["rank"] == 1
    # a group without the reference has no equal-accuracy gains, but the key is there
    small = lb.summary(lb.records_to_frame(lb.load_records(SMALL / "runs")[0]))
    assert small["groups"]["default"]["mobilenet_v2"]["fashion-mnist"]["w4a4"]["gain_at_equal_accuracy"] == {}


def test_csv_carries_the_new_columns_and_older_csvs_still_read(curves, tmp_path):
    path = tmp_path / "leaderboard.csv"
    lb.write_leaderboard_csv(curves, path)
    back = lb.read_leaderboard_csv(path)
    pd.testing.assert_frame_equal(back, curves)
    header = path.read_text().splitlines()[0].split(",")
    for col in ("budget_used", "budget_floor", "budget_matched", "search_extraction", "search_length", "search_curve",
                "search_precision", "finetune_precision"):
        assert col in header
    # a CSV written before these columns existed: fallbacks as for old records
    old = pd.read_csv(path, dtype=str, keep_default_na=False).drop(
        columns=["budget_used", "budget_floor", "budget_matched", "search_length", "search_curve"])
    old.to_csv(tmp_path / "old.csv", index=False)
    again = lb.read_leaderboard_csv(tmp_path / "old.csv")
    assert np.allclose(again["budget_used"].astype(float), curves["budget_used"].astype(float))
    assert (again["budget_floor"] == 0.9).all() and (again["search_curve"] == again["method"]).all()


def test_results_table_script(curves, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_table", ROOT / "scripts" / "results_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    path = tmp_path / "leaderboard.csv"
    lb.write_leaderboard_csv(curves, path)
    lines = mod.table(path).splitlines()
    assert "mean ± 95% CI" in lines[0] and len(lines) == 2 + 8  # 6 w3a3 + 2 w2a2 entries at length 1
    assert lines[2].startswith("| w3a3 | asga-rhomin | digits | 90.00 ± 1.24 | 3 | best | 98.1% | ilp |")
    assert "| uniform | digits | 86.50 ± 3.29 | 3 | yes (-3.50 ± 4.48) |" in lines[5]
    assert "| edmips-argmax | digits | 91.00 ± 1.24 | 3 |  | 44.4% (not matched) | argmax |" in lines[7]
    gains = mod.gains_table(path).splitlines()
    assert "| w3a3 | asga | digits | edmips-target@fashion-mnist | +471% [+433%, +540%] | +376% [+344%, +433%] | +300% |" in gains[3]
    assert "> +700% [+700%, +∞]" in gains[4]


def test_odd_values_in_the_new_fields_read_as_missing():
    recs, _ = lb.load_records(CURVES / "runs")
    rec = json.loads(json.dumps(recs[0]))
    rec["achieved"]["budget_used"] = "lots"
    rec["search"].update(length="long", budget_floor=True, curve=["x"], extraction=3, trace="none", entropy=[1])
    row = lb.records_to_frame([rec]).iloc[0]
    assert row["budget_used"] == pytest.approx(rec["achieved"]["bitops_g_searchable"] / rec["budget"]["bitops_g"])
    assert (row["search_length"], row["budget_floor"], row["search_curve"]) == (1.0, 0.9, rec["method"])
    assert row["search_extraction"] == "3"
