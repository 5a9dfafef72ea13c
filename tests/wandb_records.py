"""Read an offline W&B run file back (wandb >= 0.2x writes only `run-<id>.wandb`, a LevelDB-style
log of protobuf `Record`s; the Python reader was removed from wandb, so the tests carry one)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7  # crc32 (4) + length (2) + type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def payloads(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, pending = 7, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    for payload in payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def history(path: Path) -> list[dict]:
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({
                "/".join(item.nested_key) if item.nested_key else item.key: json.loads(item.value_json)
                for item in record.history.item
            })  # fmt: skip
    return rows


def run_info(path: Path) -> dict:
    """The run record: id, project, group, job type, name, tags, config."""
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            run = record.run
            config = {
                item.key: json.loads(item.value_json) for item in run.config.update
            }  # fmt: skip
            return {
                "id": run.run_id, "project": run.project, "group": run.run_group,
                "job_type": run.job_type, "name": run.display_name, "tags": list(run.tags),
                "config": config,
            }  # fmt: skip
    raise AssertionError("no run record")


def summary(path: Path) -> dict:
    out: dict = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                out[key] = json.loads(item.value_json)
    return out
