"""Section 7: a folder decoded into memory vs streamed from its files (`dataset.storage`).

Real `saln-train` runs on a folder of PNGs written here, each in its own subprocess: peak memory
(max RSS) and the seconds of one training epoch and its evaluation, read from the run's
metrics.jsonl. Streaming trades memory (no decoded pixels held) for decoding every epoch again;
the DataLoader workers are what hide that cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from bench.memory import measured_run
from bench.settings import Log, Settings
from bench.tables import table
from saln_exp import rundir

KEY = "streaming"


def write_folder(root: Path, n_images: int, side: int, classes: int = 10) -> None:
    """`train/<class>/<i>.png` (and a test/ a quarter the size) of random pixels."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_images), ("test", max(classes, n_images // 4))):
        for i in range(n):
            folder = root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
            PIL.Image.fromarray(pixels).save(folder / f"{i}.png")


def measure(st: Settings, device: torch.device, workdir: Path, log: Log) -> list[dict[str, Any]]:
    data_dir = workdir / "streaming_data"
    n, side = st.streaming_images, st.streaming_side
    write_folder(data_dir / "imagefolder", n, side)
    decoded_mib = (n + max(10, n // 4)) * 3 * side * side / 2**20
    base = [
        "logger=none", "trainer.progress=false", "dataset=imagefolder",
        f"paths.data_dir={data_dir}", f"dataset.image_size={side}", "model=fcnet",
        "model.hidden=64", "selector=none", "trainer.epochs=1", "dataset.batch_size=128",
        "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]",
    ]  # fmt: skip
    cases = [("memory", 0)] + [("stream", w) for w in st.streaming_workers]
    rows = []
    for i, (storage, workers) in enumerate(cases):
        run_dir = workdir / f"streaming{i}"
        args = [*base, f"dataset.storage={storage}", f"dataset.workers={workers}",
                f"hydra.run.dir={run_dir}"]  # fmt: skip
        result = measured_run(args, workdir / f"streaming{i}_out")
        epoch = {}
        if result["returncode"] == 0:
            epoch = rundir.read_jsonl(run_dir / rundir.METRICS)[-1]
        train_s = float(epoch.get("time/train_s", float("nan")))
        rows.append(
            {
                "storage": storage,
                "workers": workers,
                "images": n,
                "side": side,
                "decoded_mib": decoded_mib,
                "max_rss_mb": result["max_rss_kb"] / 1024,
                "train_s": train_s,
                "eval_s": float(epoch.get("time/eval_s", float("nan"))),
                "train_images_per_s": n / train_s if train_s > 0 else float("nan"),
                "returncode": result["returncode"],
                "error": result["stderr_tail"] if result["returncode"] else "",
            }
        )
        log(f"  {storage}, {workers} worker(s): {rows[-1]['max_rss_mb']:.0f} MB, "
            f"epoch {train_s:.2f} s")  # fmt: skip
    return rows


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    first = rows[0]
    lines = [
        "",
        "## 7. A folder in memory vs streamed from disk (`dataset.storage`)",
        "",
        f"{first['images']} training PNGs at {first['side']}x{first['side']} "
        f"({first['decoded_mib']:.0f} MiB of decoded pixels with test/), FCNet, one epoch, "
        "selector none; each run its own `saln-train` process.",
        "",
    ]
    cells = [
        [
            r["storage"],
            r["workers"],
            f"{r['max_rss_mb']:.0f}",
            f"{r['train_s']:.2f}",
            f"{r['eval_s']:.2f}",
            f"{r['train_images_per_s']:.0f}",
            r["returncode"],
        ]
        for r in rows
    ]
    header = [
        "storage",
        "workers",
        "max RSS MB",
        "epoch train s",
        "eval s",
        "train images/s",
        "exit",
    ]
    return lines + table(header, cells)
