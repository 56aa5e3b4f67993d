"""results/figures: one colour per method @ proxy entry across panels, the legend covers every entry."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("seaborn")

from mpqbench import figures  # noqa: E402
from mpqbench import leaderboard as lb  # noqa: E402

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
    return kept


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
