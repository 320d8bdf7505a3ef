"""Runs as tables: CSV for scripts, Markdown for the parent run, aligned text for a terminal."""

from __future__ import annotations

import csv
import io
from typing import Any, Mapping, Sequence

# Params that say where a run was tracked or how it was shown, not what it computed.
NOT_COMPARED = ("mlflow.", "resume", "data.dir", "data.cache_dir", "trainer.progress", "tags", "notes")


def table_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "(no members)\n"
    keys = [k for k in rows[0] if k not in ("run_id",)]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v.is_integer():
                return str(int(v))
            return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")[:120]

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def table_text(rows: Sequence[Mapping[str, Any]], drop: Sequence[str] = ("run_id", "failure_reason")) -> str:
    """Rows as an aligned plain-text table for a terminal."""
    if not rows:
        return "(no runs)\n"
    keys = [k for k in rows[0] if k not in drop]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return str(int(v)) if v.is_integer() and abs(v) >= 1 else (f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}")
        return "" if v is None else str(v)

    cells = [[cell(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def varying_params(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Params whose values differ between ``runs`` (what a comparison should show)."""
    keys = sorted({k for r in runs for k in r["params"]})
    return [k for k in keys if not k.startswith(NOT_COMPARED) and len({r["params"].get(k) for r in runs}) > 1]
