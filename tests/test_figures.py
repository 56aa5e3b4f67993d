"""results/figures: one colour per method @ proxy entry across panels, the legend covers every entry."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("seaborn")

from mpqbench import figures  # noqa: E402
from mpqbench import board as lb  # noqa: E402

SMALL = Path(__file__).parent / "fixtures" / "results_small"


@pytest.fixture()
def drawn(monkeypatch, tmp_path):
    """write_figures on the small fixtures, keeping each figure (path name -> Figure) instead of closing it."""
    kept = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: kept.__setitem__(Path(path).name, fig))
    records, problems = lb.load_records(SMALL / "runs")
    assert problems == []
    written = figures.write_figures(lb.records_to_frame(records), records, tmp_path)
    assert sorted(p.name for p in written) == sorted(kept)
    yield kept
    figures.plt.close("all")


def test_cost_panels_share_one_colour_per_entry(drawn):
    cost = [fig for name, fig in drawn.items() if name.startswith("cost_")]
    assert cost
    for fig in cost:
        colour: dict[str, tuple] = {}
        panels = [ax for ax in fig.axes if ax.collections]
        assert len(panels) >= 1
        seen_in_panels = [set() for _ in panels]
        for i, ax in enumerate(panels):
            for coll in ax.collections:
                label = coll.get_label()
                if label.startswith("_"):  # error bars (unlabelled line collections)
                    continue
                rgba = tuple(coll.get_facecolor()[0])
                assert colour.setdefault(label, rgba) == rgba, f"{label} changes colour between panels"
                seen_in_panels[i].add(label)
        # distinct entries get distinct colours, and the legend names every entry of every panel
        assert len(set(colour.values())) == len(colour)
        legend = [t.get_text() for t in panels[-1].get_legend().get_texts()]
        assert sorted(legend) == sorted(set().union(*seen_in_panels))


def test_entry_palette_is_order_independent():
    a = figures.entry_palette(["b (x)", "a (x)", "c (y)"])
    b = figures.entry_palette(["c (y)", "a (x)", "b (x)", "a (x)"])
    assert a == b and len(set(a.values())) == 3


CURVES = Path(__file__).parent / "fixtures" / "results_curves"
T2 = 4.302652729749464  # t(0.975, 2): three seeds


@pytest.fixture()
def drawn_curves(monkeypatch, tmp_path):
    kept = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: kept.__setitem__(Path(path).name, fig))
    records, problems = lb.load_records(CURVES / "runs")
    assert problems == []
    figures.write_figures(lb.records_to_frame(records), records, tmp_path)
    yield kept
    figures.plt.close("all")


def test_small_results_have_no_curves_figure(drawn):
    assert not [n for n in drawn if n.startswith("curves_")]


def test_curves_figure_by_hand(drawn_curves):
    """One line per curve and budget: mean top-1 ± 95 % CI against mean search MACs (see test_leaderboard.py)."""
    fig = drawn_curves["curves_default_resnet20.png"]
    panels = [ax for ax in fig.axes if ax.containers]
    assert [ax.get_title() for ax in panels] == ["resnet20 @ w2a2", "resnet20 @ w3a3"]
    w3 = {c.get_label(): c for c in panels[1].containers}
    assert sorted(w3) == ["asga (digits)", "asga-rhomin (digits)", "edmips-target (fashion-mnist)", "gmpq-asga (digits)"]
    ref = w3["edmips-target (fashion-mnist)"]
    x, y = ref.lines[0].get_data()
    assert list(x) == [1e12, 2e12, 4e12, 8e12] and list(y) == [85.0, 87.5, 87.0, 89.0]
    # error bars: 0.25x seeds 84, 85, 86 (sd 1) -> ± 4.303 / sqrt(3); 0.5x 87, 87.5, 88 (sd 0.5)
    segs = ref.lines[2][0].get_segments()
    assert [s[1][1] - s[0][1] for s in segs] == pytest.approx([2 * T2 / 3 ** 0.5, T2 / 3 ** 0.5, T2 / 3 ** 0.5,
                                                              2 * T2 / 3 ** 0.5])
    assert list(w3["asga (digits)"].lines[0].get_data()[1]) == [86.0, 88.0, 88.5]
    # the reference's isotonic fit (dashed) and asga's equal-accuracy point on it
    dashed = [ln for ln in panels[1].lines if ln.get_linestyle() == "--"]
    assert {tuple(ln.get_data()[1]) for ln in dashed} == {(85.0, 87.25, 87.25, 89.0)}
    crosses = [ln for ln in panels[1].lines if ln.get_marker() == "x"]
    assert len(crosses) == 1 and crosses[0].get_data()[0][0] == pytest.approx((4 + 0.75 / 1.75 * 4) * 1e12)
    text = "\n".join(t.get_text() for t in panels[1].texts)
    assert "asga (digits): +471% [+433%, +540%]" in text and "asga-rhomin (digits): > +700%" in text
    # one colour per curve in every panel
    colour = {}
    for ax in panels:
        for c in ax.containers:
            rgba = tuple(c.lines[0].get_color()) if not isinstance(c.lines[0].get_color(), str) else c.lines[0].get_color()
            assert colour.setdefault(c.get_label(), rgba) == rgba


def test_curves_figure_is_byte_identical_on_regeneration(tmp_path):
    records, _ = lb.load_records(CURVES / "runs")
    frame = lb.records_to_frame(records)
    a = figures.write_figures(frame, records, tmp_path / "a")
    b = figures.write_figures(frame.sample(frac=1, random_state=0), list(reversed(records)), tmp_path / "b")
    assert [p.name for p in a] == [p.name for p in b] and "curves_default_resnet20.png" in [p.name for p in a]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name


def test_cost_figure_error_bars_are_95_percent_intervals(drawn):
    fig = drawn["cost_default_resnet20.png"]
    w3 = [ax for ax in fig.axes if ax.get_title() == "resnet20 @ w3a3"][0]
    heights = {round(float(s[1][1] - s[0][1]), 6) for c in w3.containers for s in c.lines[2][0].get_segments()}
    # asga @ digits: 88, 89, 90 -> ± 4.303 x 1 / sqrt(3); gmpq: 87, 87.5 -> ± 12.706 x 0.3536 / sqrt(2)
    assert round(2 * T2 / 3 ** 0.5, 6) in heights
    assert round(2 * 12.706204736174707 * 0.5 ** 0.5 / 2 ** 0.5 / 2, 6) in heights
