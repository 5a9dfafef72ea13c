"""bench/results.json and bench/results.md: writing them, and keeping the sections that a
`--only` run did not re-run."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.tables import table

SCHEMA_VERSION = 1
Markdown = Callable[[list[dict[str, Any]]], list[str]]


def merged_with_earlier(
    results: dict[str, Any], earlier_path: Path, keys: dict[str, str], every_section: bool
) -> dict[str, Any]:
    """`--only` re-runs some sections: keep the other sections' numbers from the earlier
    results.json of the same settings, and say in the header which sections are new. `keys`
    maps each re-run section's name to its key in the results."""
    if every_section or not earlier_path.exists():
        return results
    try:
        earlier = json.loads(earlier_path.read_text())
    except (OSError, ValueError):
        return results
    same_kind = (  # results before `plan` existed were all cpu-plan runs
        earlier.get("plan", "cpu") == results["plan"] and earlier.get("quick") == results["quick"]
    )
    if earlier.get("schema") != SCHEMA_VERSION or not same_kind:
        return results
    merged = dict(earlier)
    for section, key in keys.items():
        merged[key] = results.get(key, [])
        if section in results["errors"]:
            merged.setdefault("errors", {})[section] = results["errors"][section]
        else:
            merged.get("errors", {}).pop(section, None)
    update = {
        "sections": list(keys),
        "created": results["created"],
        "seconds": results["total_seconds"],
        "machine": results["machine"],
    }
    merged["updates"] = [*earlier_updates(earlier, set(keys)), update]
    merged.pop("updated", None)  # the one-update form of older files
    merged["sections"] = sorted(set(earlier.get("sections", [])) | set(keys))
    return merged


def earlier_updates(earlier: dict[str, Any], rerun: set[str]) -> list[dict[str, Any]]:
    """The earlier `--only` runs that still hold some sections' numbers, each with only those."""
    updates = earlier.get("updates") or ([earlier["updated"]] if earlier.get("updated") else [])
    kept = []
    for u in updates:
        sections = [s for s in u["sections"] if s not in rerun]
        if sections:
            kept.append({**u, "sections": sections})
    return kept


def header_markdown(results: dict[str, Any]) -> list[str]:
    """Where and when the numbers were measured, and how to read them."""
    m = results["machine"]
    lines = [
        "# saln-bench results",
        "",
        f"Machine: {m['cpu']} ({m['arch']}), {m['cores_usable']} of {m['cores']} cores usable, "
        f"{m.get('memory_gb')} GiB; device {m['device']}{' (' + m['gpu'] + ')' if m.get('gpu') else ''}; "
        f"torch {m['torch']} ({m['torch_threads']} threads), numpy {m['numpy']}, scipy {m['scipy']}, "
        f"Python {m['python']}.",
        f"Run: {results['created']}, {results.get('plan', 'cpu')} plan, "
        f"{'quick' if results['quick'] else 'default'} settings, "
        f"{results['total_seconds']:.0f} s; load average {m.get('load_average_start')} at start, "
        f"{m.get('load_average_end')} at end.",
        "Times are medians of repeated runs with [first-third quartile]; ratios are taken round by "
        "round (both sides timed back to back) and summarised the same way.",
    ]
    for u in results.get("updates") or []:
        lines.append(
            f"Sections {', '.join(u['sections'])} re-run on {u['created']} on "
            f"{u['machine']['cpu']}, {u['machine']['cores']} cores, torch "
            f"{u['machine']['torch_threads']} thread(s) ({u['seconds']:.0f} s, "
            f"load average {u['machine'].get('load_average_start')} at start, "
            f"{u['machine'].get('load_average_end')} at end)."
        )
    if results.get("updates"):
        lines.append("The other sections are from the run above.")
    lines += ["", "## Targets", ""]
    return lines + table(
        ["target", "required", "measured", "status"],
        [
            [t["target"], t["required"], t["measured"], f"**{t['status']}**"]
            for t in results["targets"]
        ],
    )


def to_markdown(results: dict[str, Any], sections: Sequence[tuple[str, Markdown]]) -> str:
    """results.md: the header and targets, then each section with results (`sections`: its key
    in the results and its table, in the order they appear), then any errors."""
    lines = header_markdown(results)
    for key, markdown in sections:
        if results.get(key):
            lines += markdown(results[key])
    errors = results.get("errors") or {}
    if errors:
        lines += ["", "## Errors", ""] + [f"- {name}: `{msg}`" for name, msg in errors.items()]
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, set):
        return sorted(value)
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def write(results: dict[str, Any], markdown: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    (out_dir / "results.md").write_text(markdown)
