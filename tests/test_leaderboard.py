"""mpqbench.leaderboard: flattening, CSV determinism, validation, ranking, Pareto front, gains.

Expected numbers are computed by hand from tests/fixtures/results_small (see make_fixtures.py):
resnet20 / w3a3 / fashion-mnist, mean top-1 over ok seeds:
  edmips-target@fashion-mnist 89.5, asga@fmnist-subset 89.3, asga@digits 89.0 (88, 89, 90),
  asga-sam 88.5, gmpq-asga 87.5, gmpq 87.25, edmips 86.5 (seed 2 failed), hawq 85, uniform 84, random 81.
Mean search MACs: asga 2e12 (2.2, 1.8, 2.0), gmpq-asga 3e12, gmpq 4e12, edmips 1e12, edmips-target 5e12.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mpqbench import leaderboard as lb
from mpqbench.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = FIXTURES / "results_small"
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
    assert any("gmpq/" in p and "'seed' must be an integer" in p and "metrics.top1" in p for p in problems)
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
    assert lb.t_quantile(0.95, 30) == pytest.approx(2.042272456)


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
    assert g["gain_macs"] == pytest.approx(-1.0) and g["baseline_role"] == "baseline"
    g = key.loc[("mobilenet_v2", "w4a4", "asga", "digits", "gmpq", "digits")]
    assert (g["gain_macs"], g["gain_wall_s"], g["top1_diff_pp"]) == pytest.approx((0.5, 0.5, 1.0))
    # proposed methods are not compared with each other; every w3a3 proposed entry meets the 7 others
    assert not (gains["baseline"].isin(lb.PROPOSED)).any()
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
    row = frame[(frame["method"] == "asga-sam") & (frame["seed"] == 0)].iloc[0]
    cmds = lb.reproduce_commands(row)
    assert cmds["search"] == ("mpqbench search --method asga --label asga-sam --arch resnet20 --proxy digits "
                              "--target fashion-mnist --budget w3a3 --seed 0 --hp align=false --hp rho_max=0.1 "
                              "--out policy.json")
    assert cmds["snakemake"] == f"snakemake --cores 8 {row['record_path']}"
    assert (SMALL / row["record_path"].removeprefix("results/")).is_file()
    loop = lb.entry_commands(frame[(frame["method"] == "gmpq") & (frame["arch"] == "resnet20")])
    assert loop["search"].startswith("for s in 0 1; do mpqbench search --method gmpq ")
    assert "--seed $s --out policy-s$s.json; done" in loop["search"]
    assert loop["snakemake"].count("results/runs/") == 2


def test_reproduce_command_quotes_odd_values():
    row = {"method": "m", "base_method": "m", "arch": "a", "proxy": "p", "target": "t", "budget": "w3a3",
           "seed": 0, "search_hparams": json.dumps({"note": "two words"}), "record_path": "results/runs/x.json"}
    assert "--hp 'note=two words'" in lb.reproduce_commands(row)["search"]


# ------------------------------------------------------------------ published numbers


def test_published_csv_is_sourced_and_separate():
    pub = lb.load_published(ROOT / "baselines" / "published.csv")
    assert list(pub.columns) == lb.PUBLISHED_COLUMNS and len(pub) >= 20
    assert pub["source_url"].str.startswith("https://github.com/").all()
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
