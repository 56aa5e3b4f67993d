"""How fast the leaderboard's first view shows its ranking, in headless Chromium (cold and warm).

For each of ``--rounds`` rounds: start ``streamlit run app/leaderboard.py`` (the tests' server helper: a free
port on 127.0.0.1, no file watcher), wait until it answers its health check, then open the page twice in a
fresh headless Chromium: **cold** is the first view of a fresh server (the app script's imports and the
records' loading happen in it), **warm** the second (cached data, modules imported). Each view is timed from
navigation to (a) the ranking table drawn (the first data frame on the page: what the user came for) and (b)
the script finished (no running indicator: every chart, the gains at equal accuracy, the policy and
provenance sections). Prints the medians over rounds and each round.

    python benchmarks/page_load.py [--results results] [--rounds 3]
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

from tests.test_browser import CHROMIUM, browser_page, serve  # noqa: E402

RANKING = '[data-testid="stDataFrame"]'
RUNNING = "!document.querySelector('[data-testid=stStatusWidget]')"


def view(page, url: str) -> tuple[float, float]:
    start = time.perf_counter()
    page.goto(url, wait_until="commit")
    page.wait_for_selector(RANKING, timeout=120_000)
    ranking = time.perf_counter() - start
    page.wait_for_function(RUNNING, timeout=120_000)
    return ranking, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(REPO / "results"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if CHROMIUM is None:
        sys.exit("error: needs Debian chromium (apt-get install -y chromium)")
    rows = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp, serve(Path(args.results), Path(tmp) / "streamlit.log") as url:
            with browser_page() as page:
                rows.append((*view(page, url), *view(page, url)))
    names = ("cold: ranking", "cold: script done", "warm: ranking", "warm: script done")
    print(f"leaderboard page load, {args.results}, seconds from navigation ({args.rounds} fresh servers)")
    print(f"{'':<20}{'median':>8}  rounds")
    for i, name in enumerate(names):
        print(f"{name:<20}{statistics.median(r[i] for r in rows):>8.2f}  " + " ".join(f"{r[i]:.2f}" for r in rows))


if __name__ == "__main__":
    main()
