"""Tables -> LaTeX a paper can print: booktabs floats set at `\\footnotesize`, never scaled or
turned sideways, each narrow enough for a one-column A4 page (the default `article` text width,
345 pt).

A table is printed one column group at a time, each group a float of its own with the group in
its caption and label: the ASSIST thesis' own groups (accuracy / mean loss / q0.9 loss / worst
loss, each train / test / ratio), the comparison's (accuracy / test loss quantiles / cost /
accuracy at equal cost), one per quantity of the label-noise table. A group wider than the page
is cut again. The number of runs stands once per row (column n); a cell made from fewer of the
row's runs says how many. Each of our values is a mean column and a `± std` column, both
right-aligned with fixed decimals so decimal points line up; the paper's value, where there is
one, stands beside ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from saln_exp.report.tables import MISSING, Table, format_number, format_spread, slug

PREAMBLE = (
    "% needs \\usepackage{booktabs}; \\clearpage after each table keeps LaTeX's float queue short\n"
)
TEXT_WIDTH = 345.0  # pt: the default `article` text width on A4, the narrowest page to fit
# How wide text is at \footnotesize (Computer Modern, 8 pt): digits 4.25 pt, a space or point
# about 2.5, ± 6.2; letters 2.4-7.5, counted as 4.6 (a little more than lower-case text needs).
CHAR_PT = {**dict.fromkeys("0123456789", 4.25), ".": 2.5, ",": 2.5, " ": 2.7, "±": 6.6}
OTHER_PT = 4.6
COLUMN_SEP_PT = 8.0  # 2 x \tabcolsep

LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", MISSING: "---", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$",
}  # fmt: skip


def latex_escape(text: object) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def latex_note(text: str) -> str:
    """A table's note: escaped, its `code` spans (config keys, file names) in typewriter."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans to find
        return latex_escape(text)
    return "".join(
        rf"\texttt{{{latex_escape(p)}}}" if i % 2 else latex_escape(p) for i, p in enumerate(parts)
    )


def text_width(text: str) -> float:
    return sum(CHAR_PT.get(ch, OTHER_PT) for ch in text)


# -- the cells of one value column ----------------------------------------------------------------
@dataclass
class Column:
    """One value column as printed: per row our mean (None: missing) and `± std`, and the
    paper's value where the paper has any for this column."""

    name: str
    means: list[str | None]
    spreads: list[str]
    paper: list[str] | None

    def width(self) -> float:
        ours = max(
            [text_width("ours")]
            + [text_width(f"{m} {s}") for m, s in zip(self.means, self.spreads, strict=True) if m]
        )
        paper = max(map(text_width, ["paper", *self.paper])) + COLUMN_SEP_PT if self.paper else 0
        return max(ours + paper, text_width(self.name)) + COLUMN_SEP_PT


def row_counts(table: Table) -> pd.Series:
    """Per row, the most runs behind any of its cells: the row's n."""
    counts = table.numbers.xs("n", axis=1, level=1) if len(table.numbers.columns) else None
    if counts is None or counts.empty:
        return pd.Series(0, index=table.numbers.index)
    return counts.fillna(0).max(axis=1).astype(int)


def value_column(table: Table, header: str, name: str, row_n: pd.Series) -> Column:
    numbers, digits = table.numbers[header], table.digits[header]
    means, spreads = [], []
    for (mean, std, n), total in zip(
        numbers[["mean", "std", "n"]].itertuples(index=False), row_n, strict=True
    ):
        n = 0 if pd.isna(n) else int(n)
        if not n or pd.isna(mean):
            means.append(None)
            spreads.append("")
            continue
        means.append(format_number(mean, digits))
        own = f" (n={n})" if n < total else ""  # fewer runs than the row's n made this cell
        spreads.append((format_spread(std, n, digits) + own).strip())
    shown = "paper" in numbers and bool(numbers["paper"].notna().any())
    paper = [format_number(v, digits) for v in numbers["paper"]] if shown else None
    return Column(name, means, spreads, paper)


# -- which columns go into which float --------------------------------------------------------------
def key_width(table: Table, row_n: pd.Series) -> float:
    """The row names' and n's columns."""
    index = table.numbers.index.to_frame(index=False).astype(str)
    widths = [
        max(map(text_width, [str(k), *index[k]])) + COLUMN_SEP_PT for k in index.columns
    ]  # fmt: skip
    return sum(widths) + text_width(str(row_n.max() if len(row_n) else 0)) + COLUMN_SEP_PT


def column_parts(table: Table) -> list[tuple[str, list[Column]]]:
    """(part name, columns) per float: the table's column groups in order, a group cut where its
    columns would no longer fit the page beside the row names; an ungrouped table is one group."""
    row_n = row_counts(table)
    groups: dict[str, list[Column]] = {}
    for header in dict.fromkeys(h for h, _ in table.numbers.columns):
        group, name = table.groups.get(header, ("", header))
        groups.setdefault(group, []).append(value_column(table, header, name, row_n))
    room = TEXT_WIDTH - key_width(table, row_n)
    parts = []
    for group, columns in groups.items():
        pieces, used = [[]], 0.0
        for column in columns:
            if pieces[-1] and used + column.width() > room:
                pieces.append([])
                used = 0.0
            pieces[-1].append(column)
            used += column.width()
        for k, piece in enumerate(pieces, 1):
            parts.append(
                (f"{group} {k}/{len(pieces)}".strip() if len(pieces) > 1 else group, piece)
            )
    return parts or [("", [])]


# -- one float ------------------------------------------------------------------------------------
def header_rows(keys: list[str], columns: list[Column]) -> list[str]:
    """Each value column's name over its `ours` (mean and ± std) and, when the paper has one,
    `paper` cells; the key names and n on the bottom row, next to the numbers."""
    bottom = [latex_escape(k) for k in keys] + ["$n$"]
    if not any(c.paper for c in columns):
        names = [rf"\multicolumn{{2}}{{c}}{{{latex_escape(c.name)}}}" for c in columns]
        return [" & ".join(bottom + names) + r" \\"]
    top, rules, at = [""] * len(bottom), [], len(bottom) + 1
    for column in columns:
        width = 3 if column.paper else 2
        top.append(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(column.name)}}}")
        rules.append(rf"\cmidrule(lr){{{at}-{at + width - 1}}}")
        at += width
    sub = [r"\multicolumn{2}{c}{ours}" + (" & paper" if c.paper else "") for c in columns]
    return [" & ".join(top) + r" \\", " ".join(rules), " & ".join(bottom + sub) + r" \\"]


def key_cells(index: pd.Index) -> list[list[str]]:
    """Row names; an outer key repeated from the row above is left blank, as the papers print
    one model over its filtering modes."""
    rows, previous = [], None
    for key in index:
        key = key if isinstance(key, tuple) else (key,)
        cells = [
            "" if previous is not None and i < len(key) - 1 and key[: i + 1] == previous[: i + 1]
            else latex_escape(value)
            for i, value in enumerate(key)
        ]  # fmt: skip
        rows.append(cells)
        previous = key
    return rows


def body_rows(table: Table, columns: list[Column]) -> list[str]:
    """One line per row: names, n, and per column our mean and ± std (one dash across both
    where missing) and the paper's value."""
    lines = []
    row_n = row_counts(table)
    for i, (names, n) in enumerate(zip(key_cells(table.numbers.index), row_n, strict=True)):
        cells = [*names, str(n)]
        for column in columns:
            mean = column.means[i]
            if mean is None:
                cells.append(rf"\multicolumn{{2}}{{c}}{{{latex_escape(MISSING)}}}")
            else:
                cells += [latex_escape(mean), latex_escape(column.spreads[i])]
            if column.paper:
                cells.append(latex_escape(column.paper[i]))
        lines.append(" & ".join(cells) + r" \\")
    return lines


def latex_float(table: Table, part: str, columns: list[Column], alone: bool) -> str:
    keys = [str(k) for k in table.numbers.index.names]
    align = "l" * len(keys) + "r" + "".join("r@{\\,}l" + ("r" if c.paper else "") for c in columns)
    caption = table.title if alone else f"{table.title} ({part})"
    label = slug(table.title) if alone else f"{slug(table.title)}_{slug(part)}"
    own_n = any("(n=" in s for c in columns for s in c.spreads)
    note = table.note + (
        " (n=k) after a value: only k of the row's n runs have it." if own_n else ""
    )
    lines = [
        r"\begin{table}[htbp]", r"\centering", rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{tab:{label}}}", r"\footnotesize", r"\setlength{\tabcolsep}{4pt}",
        rf"\begin{{tabular}}{{{align}}}", r"\toprule", *header_rows(keys, columns), r"\midrule",
        *body_rows(table, columns), r"\bottomrule", r"\end{tabular}",
    ]  # fmt: skip
    if note.strip():
        lines.append(rf"\par\smallskip{{\raggedright {latex_note(note.strip())}\par}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def render_latex(table: Table) -> str:
    """The table as one booktabs float per column part (caption and `\\label{tab:...}` each)."""
    parts = column_parts(table)
    return "\n".join(latex_float(table, part, cols, len(parts) == 1) for part, cols in parts)


def latex_file(tables: list[Table]) -> str:
    """tables.tex: each table's floats, then `\\clearpage`, so a document can `\\input` the
    whole file (LaTeX holds only so many floats waiting for a page)."""
    return PREAMBLE + "\\clearpage\n\n".join(render_latex(t) for t in tables)
