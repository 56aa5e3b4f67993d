"""results/figures: PNG, PDF and SVG; one panel per budget; one fixed colour per method; 95 % CI error bars and
the seeds in the caption; search cost in G/T MACs on a log axis with zero-cost controls noted; heatmaps with a colour
bar over the candidate bit-widths."""

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


def _marker_colour(container) -> str:
    """The face colour (hex) of an error-bar container's marker."""
    from matplotlib.colors import to_hex

    return to_hex(container.lines[0].get_markeredgecolor())


def test_cost_panels_share_one_colour_per_method(drawn):
    """One panel per budget; a method has its fixed palette colour in every panel (proxies differ by marker),
    distinct methods have distinct colours, and the figure's legend names every method drawn."""
    from mpqbench.board import palette

    fig = drawn["cost_default_resnet20.png"]
    panels = [ax for ax in fig.axes if ax.containers]
    assert [ax.get_title() for ax in panels] == ["resnet20 @ w3a3", "resnet20 @ w2a2"]  # largest budget first
    colour: dict[str, str] = {}
    for ax in panels:
        for c in ax.containers:
            method = c.get_label().split(" (")[0]
            assert colour.setdefault(method, _marker_colour(c)) == _marker_colour(c), f"{method} changes colour"
            assert _marker_colour(c) == palette.method_colour(method).lower()
    assert len(set(colour.values())) == len(colour)
    legend = {t.get_text() for t in panels[-1].get_legend().get_texts()}
    assert set(colour) <= legend and {"proxy: digits", "proxy: fmnist-subset"} <= legend
    # asga on two proxies: one colour, two markers
    markers = {c.get_label(): c.lines[0].get_marker() for ax in panels for c in ax.containers}
    assert markers["asga (digits)"] != markers["asga (fmnist-subset)"]


def test_entry_palette_is_order_independent():
    a = figures.entry_palette(["edmips (x)", "asga (x)", "gmpq (y)"])
    b = figures.entry_palette(["gmpq (y)", "asga (x)", "edmips (x)", "asga (x)"])
    assert a == b and len(set(a.values())) == 3


def test_every_figure_is_png_pdf_and_svg(tmp_path):
    records, _ = lb.load_records(SMALL / "runs")
    written = figures.write_figures(lb.records_to_frame(records), records, tmp_path)
    assert written and all(p.suffix == ".png" for p in written)
    for p in written:
        assert p.read_bytes()[:4] == b"\x89PNG"
        assert p.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
        svg = p.with_suffix(".svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(p.with_suffix(f".{x}").name for p in written
                                                                 for x in ("png", "pdf", "svg"))


def _caption(fig) -> str:
    return "\n".join(t.get_text() for t in fig.texts)


def test_captions_name_the_seeds_and_the_zero_cost_controls(drawn):
    for name in ("pareto_default_resnet20.png", "cost_default_resnet20.png"):
        text = _caption(drawn[name])
        assert "95 % CI" in text and "n = 1–3 seeds" in text, name  # w2a2 has one seed, w3a3 up to three
    cost = drawn["cost_default_resnet20.png"]
    assert "Dashed lines: controls that do not search (0 MACs, not on the log axis): random (digits), " \
           "uniform (digits)." in _caption(cost)
    w3 = [ax for ax in cost.axes if ax.get_title() == "resnet20 @ w3a3"][0]
    # uniform 84.0 and random 81.0 at w3a3 (see test_leaderboard.py): dashed lines at their top-1
    dashed = sorted(ln.get_ydata()[0] for ln in w3.lines if ln.get_linestyle() == "--")
    assert dashed == pytest.approx([81.0, 84.0])
    assert w3.get_xscale() == "log" and w3.get_xlabel() == "search cost (T MACs processed, log)"


def test_pareto_has_one_panel_per_budget_with_its_front(drawn):
    fig = drawn["pareto_default_resnet20.png"]
    panels = [ax for ax in fig.axes if ax.containers]
    assert [ax.get_title() for ax in panels] == ["resnet20 @ w3a3", "resnet20 @ w2a2"]
    for ax in panels:
        assert [ln for ln in ax.lines if ln.get_color() == "black"], "each panel draws its Pareto front"


def test_policy_heatmaps_span_the_candidates_with_a_colour_bar(drawn):
    fig = drawn["policies_default_resnet20_w3a3.png"]
    bars = [ax for ax in fig.axes if ax.get_ylabel() == "bits (candidate range)"]
    assert len(bars) == 1
    ticks = [float(t) for t in bars[0].get_yticks()]
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 2
    norm = images[0].norm
    assert norm.vmin <= min(ticks) and norm.vmax >= max(ticks)
    assert ticks == sorted(ticks) and len(ticks) >= 2


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
    assert [ax.get_title() for ax in panels] == ["resnet20 @ w3a3", "resnet20 @ w2a2"]  # largest budget first
    w3 = {c.get_label(): c for c in panels[0].containers}
    assert sorted(w3) == ["asga (digits)", "asga-rhomin (digits)", "edmips-target (fashion-mnist)", "gmpq-asga (digits)"]
    ref = w3["edmips-target (fashion-mnist)"]
    x, y = ref.lines[0].get_data()
    assert list(x) == [1.0, 2.0, 4.0, 8.0] and list(y) == [85.0, 87.5, 87.0, 89.0]  # T MACs
    # error bars: 0.25x seeds 84, 85, 86 (sd 1) -> ± 4.303 / sqrt(3); 0.5x 87, 87.5, 88 (sd 0.5)
    segs = ref.lines[2][0].get_segments()
    assert [s[1][1] - s[0][1] for s in segs] == pytest.approx([2 * T2 / 3 ** 0.5, T2 / 3 ** 0.5, T2 / 3 ** 0.5,
                                                              2 * T2 / 3 ** 0.5])
    assert list(w3["asga (digits)"].lines[0].get_data()[1]) == [86.0, 88.0, 88.5]
    # the reference's isotonic fit (dashed) and asga's equal-accuracy point on it
    dashed = [ln for ln in panels[0].lines if ln.get_linestyle() == "--"]
    assert {tuple(ln.get_data()[1]) for ln in dashed} == {(85.0, 87.25, 87.25, 89.0)}
    crosses = [ln for ln in panels[0].lines if ln.get_marker() == "x"]
    assert len(crosses) == 1 and crosses[0].get_data()[0][0] == pytest.approx(4 + 0.75 / 1.75 * 4)
    text = "\n".join(t.get_text() for t in panels[0].texts)
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
        for fmt in ("png", "pdf", "svg"):
            assert pa.with_suffix(f".{fmt}").read_bytes() == pb.with_suffix(f".{fmt}").read_bytes(), (pa.name, fmt)


def test_cost_figure_error_bars_are_95_percent_intervals(drawn):
    fig = drawn["cost_default_resnet20.png"]
    w3 = [ax for ax in fig.axes if ax.get_title() == "resnet20 @ w3a3"][0]
    heights = {round(float(s[1][1] - s[0][1]), 6) for c in w3.containers for s in c.lines[2][0].get_segments()}
    # asga @ digits: 88, 89, 90 -> ± 4.303 x 1 / sqrt(3); gmpq: 87, 87.5 -> ± 12.706 x 0.3536 / sqrt(2)
    assert round(2 * T2 / 3 ** 0.5, 6) in heights
    assert round(2 * 12.706204736174707 * 0.5 ** 0.5 / 2 ** 0.5 / 2, 6) in heights
