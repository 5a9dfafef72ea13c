"""saln-bench: does selection cost less than it saves? Speed and memory, measured side by side.

Runs the chosen sections (all by default) and writes results.json and results.md, with PASS /
MISS against each target and the machine it ran on; prints the Markdown."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from bench import (
    epochs,
    memory,
    precision,
    runner_vs_plain,
    saln_vs_paper,
    selective_backward,
    selector_cost,
    startup,
    streaming,
)
from bench.machine import load_average, machine_info
from bench.results import SCHEMA_VERSION, merged_with_earlier, to_markdown, write
from bench.settings import GPU_SECTIONS, Log, Settings, gpu_settings, quick_settings
from bench.targets import evaluate_targets
from saln_exp.config import resolve_device

BENCH_DIR = Path(__file__).resolve().parent  # results.json and results.md live beside the code


@dataclass(frozen=True)
class Section:
    name: str  # what `--only` calls it
    module: ModuleType  # with KEY (its results.json key), measure(...) and markdown(rows)

    @property
    def key(self) -> str:
        return self.module.KEY


# in the order they run and appear in results.md
SECTIONS = (
    Section("saln", saln_vs_paper),
    Section("selectors", selector_cost),
    Section("runner", runner_vs_plain),
    Section("memory", memory),
    Section("selective", selective_backward),
    Section("epochs", epochs),
    Section("streaming", streaming),
    Section("precision", precision),
    Section("startup", startup),
)
SECTION_NAMES = tuple(s.name for s in SECTIONS)


@contextlib.contextmanager
def quiet(logger: str) -> Iterator[None]:
    """Silence one logger's warnings for a while: the signed-feature case trips SALN's (correct)
    "indefinite Laplacian" warning, which is no news in a benchmark."""
    target = logging.getLogger(logger)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def run_sections(
    settings: Settings, names: tuple[str, ...], device: torch.device, results: dict, log: Log
) -> None:
    """Each chosen section into `results`; a failing one is recorded as an error, not raised."""
    with tempfile.TemporaryDirectory(prefix="saln-bench-") as tmp, quiet("saln_exp.selectors.saln"):
        workdir = Path(tmp)
        for section in SECTIONS:
            if section.name not in names:
                continue
            log(f"[{section.name}]")
            t0 = time.perf_counter()
            try:
                results[section.key] = section.module.measure(settings, device, workdir, log)
            except Exception as err:  # one broken section must not hide the others' numbers
                results[section.key] = []
                results["errors"][section.name] = f"{type(err).__name__}: {err}"
                log(f"  {section.name} failed: {type(err).__name__}: {err}")
            results.setdefault("section_seconds", {})[section.name] = time.perf_counter() - t0


def markdown_of(results: dict[str, Any]) -> str:
    return to_markdown(results, [(s.key, s.module.markdown) for s in SECTIONS])


def run(
    settings: Settings,
    out_dir: Path,
    quick: bool,
    names: tuple[str, ...] = SECTION_NAMES,
    log: Log = print,
    device: torch.device | None = None,
    plan: str = "cpu",
) -> dict[str, Any]:
    """Run the chosen sections on `device` (default: CUDA where there is one), write results.json
    and results.md to `out_dir`, return the results. `plan`: which plan the settings are (`cpu`,
    `make bench`; `gpu`, `make bench-gpu`), so a later `--only` run merges with its own kind."""
    start = time.perf_counter()
    device = device or resolve_device("auto")
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "plan": plan,
        "quick": quick,
        "sections": list(names),
        "settings": asdict(settings),
        "machine": machine_info(device),
        "errors": {},
    }
    m = results["machine"]
    log(f"saln-bench on {m['cpu']}, {m['cores']} cores, device {device}")
    torch.manual_seed(0)
    run_sections(settings, names, device, results, log)
    if (load := load_average()) is not None:
        results["machine"]["load_average_end"] = load
    results["total_seconds"] = time.perf_counter() - start
    keys = {s.name: s.key for s in SECTIONS if s.name in names}
    every = set(names) == set(SECTION_NAMES)
    results = merged_with_earlier(results, out_dir / "results.json", keys, every)
    results["targets"] = evaluate_targets(results)
    write(results, markdown_of(results), out_dir)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saln-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke run of every section"
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        help=f"the prepared GPU measurement (make bench-gpu; sections {','.join(GPU_SECTIONS)}, "
        "under 8 minutes on a GPU): needs CUDA, writes bench/gpu/ by default",
    )
    parser.add_argument("--out", help="where results.json / results.md go (default: bench/)")
    parser.add_argument(
        "--only", help=f"comma-separated subset of {','.join(SECTION_NAMES)} (default: all)"
    )
    args = parser.parse_args(argv)
    names = GPU_SECTIONS if args.gpu else SECTION_NAMES
    if args.only:
        names = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = sorted(set(names) - set(SECTION_NAMES))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTION_NAMES)}")
    if args.gpu and not torch.cuda.is_available():
        print(
            "saln-bench --gpu: no CUDA device on this machine (torch.cuda.is_available() is "
            "False); run `make bench-gpu` where there is a GPU",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out) if args.out else BENCH_DIR / "gpu" if args.gpu else BENCH_DIR
    if args.gpu:
        settings, device, plan = gpu_settings(args.quick), torch.device("cuda"), "gpu"
    else:
        settings = quick_settings() if args.quick else Settings()
        device, plan = None, "cpu"
    results = run(settings, out, args.quick, names, device=device, plan=plan)
    print()
    print(markdown_of(results))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
