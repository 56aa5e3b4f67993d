"""Published numbers (``baselines/published.csv``), shown apart from the measured ranking, and CSV
downloads of any frame."""

from __future__ import annotations

import io
import os

import pandas as pd

from mpqbench.errors import UserError

PUBLISHED_COLUMNS = ["method", "arch", "dataset", "w_bits", "a_bits", "bitops_g", "top1", "source_url",
                     "source_table", "note"]


def load_published(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``baselines/published.csv``; missing file or columns -> UserError."""
    try:
        df = pd.read_csv(path, dtype={"w_bits": str, "a_bits": str}, keep_default_na=False,
                         na_values={"bitops_g": [""], "top1": [""]})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"cannot read {path}: {exc}; restore it from git") from exc
    missing = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}; expected {', '.join(PUBLISHED_COLUMNS)}")
    try:
        df["top1"] = pd.to_numeric(df["top1"], errors="raise")
        df["bitops_g"] = pd.to_numeric(df["bitops_g"], errors="raise")
    except ValueError as exc:
        raise UserError(f"{path}: top1 and bitops_g must be numbers ({exc})") from exc
    return df[PUBLISHED_COLUMNS]


def csv_bytes(df: pd.DataFrame) -> bytes:
    """Any frame as UTF-8 CSV bytes (for downloads of filtered views)."""
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue().encode()
