"""Leaderboard logic: load run records, flatten, filter, rank, Pareto front, efficiency gains.

Pure pandas (no Streamlit, no torch at import time), shared by ``app/leaderboard.py`` and by
``mpqbench aggregate`` (which writes ``results/leaderboard.csv`` and ``results/summary.json``).
One job per module: :mod:`~mpqbench.board.records` (reading and checking record files),
:mod:`~mpqbench.board.frame` (the flat frame, the CSV, loading results), :mod:`~mpqbench.board.stats`
(ranking, ties, Pareto front), :mod:`~mpqbench.board.gains` (efficiency gains),
:mod:`~mpqbench.board.summary_json` (``summary.json``), :mod:`~mpqbench.board.policies`,
:mod:`~mpqbench.board.reproduce` (commands that recreate a run), :mod:`~mpqbench.board.published`.
Everything is re-exported here: ``from mpqbench import board as lb``. Not re-exported (import them by name):
:mod:`~mpqbench.board.export` (``mpqbench export``: LaTeX/Markdown/CSV tables, BibTeX, DVC metrics),
:mod:`~mpqbench.board.static_html` (the self-contained leaderboard.html), :mod:`~mpqbench.board.references`
(which paper each method cites) and :mod:`~mpqbench.board.palette` (one colour per method everywhere).

Vocabulary
    run     one record = (suite, method, arch, proxy, target, budget, seed); one row of the flat frame.
    group   (suite, arch, target, budget): the cell inside which methods compete.
    entry   (group, method, proxy): one competitor, aggregated over its seeds. The same method searched
            on two proxies (e.g. digits and an in-domain target subset) is two entries.

Conventions
    top-1 in percent; BitOPs in G (1e9); search cost as MACs processed (hardware independent) or wall s.
    budget_used = searchable BitOPs / budget BitOPs; a run is budget-matched when it lies in the budget
    window [floor, 1] (floor = the suite's ``budget_floor``, 0.9 when a record does not say; 1e-9 slack).
    Rankings, ties and gains use only budget-matched entries at the suite's default search length unless
    asked otherwise (``include_unmatched``); the others are listed with the reason (``unranked``).
    Fixed-length efficiency gain of entry M over entry B (same group) = cost_B / cost_M - 1, reported with
    the target-accuracy difference mean_top1(M) - mean_top1(B) in percentage points. The efficiency gain
    at equal accuracy (:func:`equal_accuracy_gains`) reads the reference's cost off its accuracy-vs-search-
    cost curve instead.
"""

from mpqbench.board.common import (BUDGET_SLACK, DEFAULT_BUDGET_FLOOR, ENTRY, GROUP, REFERENCE, RESULTS_ENV,
                                   RUN_KEY, record_role)
from mpqbench.board.frame import (COLUMNS, Results, filter_frame, frame_to_csv, load_results,
                                  read_leaderboard_csv, records_to_frame, resolve_results_dir,
                                  results_fingerprint, suite_results_dirs, write_leaderboard_csv)
from mpqbench.board.gains import (_isotonic_rows, cost_at_accuracy, curve_points, efficiency_gain,
                                  efficiency_gains, equal_accuracy_gain, equal_accuracy_gains,
                                  equal_accuracy_table, format_gain, isotonic_increasing)
from mpqbench.board.policies import natural_key, policy_frame, policy_table
from mpqbench.board.published import PUBLISHED_COLUMNS, csv_bytes, load_published
from mpqbench.board.records import load_records, validate_record
from mpqbench.board.reproduce import commands_are_cheap, entry_commands, record_relpath, reproduce_commands
from mpqbench.board.stats import pareto_front, pareto_mask, paired_difference, rank_methods, t_quantile
from mpqbench.board.summary_json import summary

__all__ = [
    "BUDGET_SLACK", "COLUMNS", "DEFAULT_BUDGET_FLOOR", "ENTRY", "GROUP", "PROPOSED",
    "PUBLISHED_COLUMNS", "REFERENCE", "RESULTS_ENV", "RUN_KEY", "Results", "cost_at_accuracy", "csv_bytes",
    "curve_points", "efficiency_gain", "efficiency_gains", "entry_commands", "equal_accuracy_gain",
    "equal_accuracy_gains", "equal_accuracy_table", "filter_frame", "format_gain", "frame_to_csv",
    "commands_are_cheap", "isotonic_increasing", "load_published", "load_records", "load_results", "natural_key", "paired_difference",
    "pareto_front", "pareto_mask", "policy_frame", "policy_table", "rank_methods", "read_leaderboard_csv",
    "record_relpath", "records_to_frame", "reproduce_commands", "resolve_results_dir", "results_fingerprint", "suite_results_dirs",
    "record_role", "summary", "t_quantile", "validate_record", "write_leaderboard_csv",
]
