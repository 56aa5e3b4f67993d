"""How fast the leaderboard's first view shows its ranking, in headless Chromium (cold and warm).

For each of ``--rounds`` rounds: start ``streamlit run app/leaderboard.py`` (the tests' server helper: 127.0.0.1,
no file watcher), wait until it answers its health check, and open the page in a fresh headless Chromium three
times: **cold** is the first view of a fresh server in a fresh browser (the browser fetches and compiles
Streamlit's scripts; the app script's imports and the records' loading happen in it), **warm** the second view
(cached data, modules imported, the browser's cache filled), **restart** a first view of a second fresh server on
the same port in the same browser (a user reopening the leaderboard: the server is cold, the browser has
Streamlit's scripts cached). Each view is timed from navigation to (a) the ranking table drawn with its rows (the
first data frame on the page, what the user came for; it is drawn empty first while the results load) and (b)
the script finished (no running indicator: the headline with the gains at equal accuracy, and the open section
below the ranking). Prints the medians over rounds and each round, and the same for Streamlit's own floor on
this machine: a one-line app that draws one small data frame (no pandas work, no data), timed alike in the same
run, and the leaderboard's times as ratios to it.

    python benchmarks/page_load.py [--results results] [--rounds 3] [--check]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.test_browser import CHROMIUM, RANKING_ROWS, _free_port, browser_page, serve  # noqa: E402

GOAL_S = 1.5
FLOOR_APP = """import streamlit as st
st.title("floor")
st.dataframe({"a": [1, 2, 3], "b": [0.5, 0.25, 0.125]})
"""
RUNNING = "!document.querySelector('[data-testid=stStatusWidget]')"


def view(page, url: str) -> tuple[float, float]:
    start = time.perf_counter()
    page.goto(url, wait_until="commit")
    page.wait_for_function(RANKING_ROWS, timeout=120_000)
    ranking = time.perf_counter() - start
    page.wait_for_function(RUNNING, timeout=120_000)
    return ranking, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(REPO / "results"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when the ranking takes over 1.5 s (cold, warm or restart)")
    args = ap.parse_args()
    if CHROMIUM is None:
        sys.exit("error: needs Debian chromium (apt-get install -y chromium)")
    rows: dict[str, list] = {"leaderboard": [], "streamlit floor": []}
    with tempfile.TemporaryDirectory() as tmp:
        floor_app = Path(tmp) / "floor_app.py"
        floor_app.write_text(FLOOR_APP)
        for _ in range(args.rounds):  # interleaved, so that load drift hits both alike
            for name, app in (("leaderboard", None), ("streamlit floor", floor_app)):
                kw = {"port": _free_port()} | ({"app": app} if app else {})
                with browser_page() as page:
                    with serve(Path(args.results), Path(tmp) / "streamlit.log", **kw) as url:
                        times = (*view(page, url), *view(page, url))
                    with serve(Path(args.results), Path(tmp) / "streamlit.log", **kw) as url:
                        rows[name].append((*times, *view(page, url)))
    names = ("cold: ranking", "cold: script done", "warm: ranking", "warm: script done", "restart: ranking",
             "restart: script done")
    print(f"page load, {args.results}, seconds from navigation to the ranking's rows / the script done "
          f"({args.rounds} fresh servers each)")
    print(f"{'':<36}{'median':>8}  rounds")
    med = {}
    for app, runs in rows.items():
        for i, name in enumerate(names):
            med[app, i] = statistics.median(r[i] for r in runs)
            print(f"{app + ' ' + name:<36}{med[app, i]:>8.2f}  " + " ".join(f"{r[i]:.2f}" for r in runs))
    for i, name in enumerate(names):
        print(f"{'ratio leaderboard / floor, ' + name:<36}{med['leaderboard', i] / med['streamlit floor', i]:>8.2f}")
    failed = []
    for i, name in ((0, "cold"), (2, "warm"), (4, "restart")):
        ok = med["leaderboard", i] <= GOAL_S
        print(f"goal: the ranking shown within {GOAL_S} s, {name}: {med['leaderboard', i]:.2f} s, "
              f"{'met' if ok else 'NOT met'}")
        failed += [] if ok else [name]
    if args.check and failed:
        sys.exit(f"page load goal not met ({', '.join(failed)})")


if __name__ == "__main__":
    main()
