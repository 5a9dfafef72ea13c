"""Markdown cells and tables for results.md: a median with its quartiles, a ratio, a table."""

from __future__ import annotations

from typing import Any


def ms(s: dict | None) -> str:
    """`median [q1-q3]` of a summary, with fewer decimals the larger it is."""
    if not s or not s.get("n"):
        return "-"
    digits = 2 if s["median"] < 10 else 1 if s["median"] < 1000 else 0
    return f"{s['median']:.{digits}f} [{s['q1']:.{digits}f}-{s['q3']:.{digits}f}]"


def ratio(s: dict | None, digits: int = 1) -> str:
    """`median x [q1-q3]` of a summary of ratios."""
    if not s or not s.get("n"):
        return "-"
    return f"{s['median']:.{digits}f}x [{s['q1']:.{digits}f}-{s['q3']:.{digits}f}]"


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out
