"""W&B: an offline run is written and can be read back; W&B failures never fail a run."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import threading
import time

import pytest
import wandb

from conftest import BIN
from saln_exp.train import run
from wandb_records import history, run_info, summary

FAST = (
    "selector=none",
    "model=fcnet",
    "model.hidden=32",
    "dataset.image_size=8",
    "trainer.epochs=2",
)


def wandb_file(run_dir):
    files = list((run_dir / "wandb").rglob("run-*.wandb"))
    assert len(files) == 1, files
    return files[0]


def test_offline_run_is_readable_and_matches_local_metrics(make_cfg, tmp_path, caplog):
    cfg = make_cfg("logger=wandb", "logger.mode=offline", "tags=[unit,offline]", *FAST)
    with caplog.at_level(logging.INFO):
        run(cfg)
    run_dir = tmp_path / "run"
    path = wandb_file(run_dir)
    local = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = history(path)
    logged = [r for r in rows if "test/acc" in r]
    assert [r["epoch"] for r in logged] == [1, 2]
    figures = [
        k
        for r in rows
        for k in r
        if k.startswith("curves") or "final_layer" in k or "selection" in k
    ]
    assert figures, "the run's figures are logged to W&B"
    for ours, theirs in zip(local, logged, strict=True):
        assert theirs["test/acc"] == pytest.approx(ours["test/acc"])
        assert theirs["samples/backprop"] == ours["samples/backprop"]
    info = run_info(path)
    assert info["project"] == "saln-exp"
    assert info["job_type"] == "none"  # the selector
    assert info["tags"] == ["unit", "offline"]
    assert info["config"]["selector"]["name"] == "none"
    assert info["id"] == (run_dir / "wandb_id").read_text().strip()
    final = summary(path)
    assert final["final_test_acc"] == pytest.approx(local[-1]["test/acc"])
    assert any("wandb sync" in r.getMessage() for r in caplog.records)


def test_disabled_mode_writes_nothing(make_cfg, tmp_path):
    run(make_cfg("logger=wandb", "logger.mode=disabled", *FAST))
    assert not (tmp_path / "run" / "wandb").exists()
    assert (tmp_path / "run" / "summary.json").exists()


def test_wandb_init_failure_does_not_fail_the_run(make_cfg, tmp_path, monkeypatch, caplog):
    def broken_init(*args, **kwargs):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    with caplog.at_level(logging.WARNING):
        run(make_cfg("logger=wandb", "logger.mode=online", *FAST))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    assert any("W&B disabled" in r.getMessage() for r in caplog.records)


def test_wandb_logging_failure_mid_run_does_not_fail_the_run(
    make_cfg, tmp_path, monkeypatch, caplog
):
    real_init = wandb.init

    def init_with_broken_log(*args, **kwargs):
        handle = real_init(*args, **kwargs)

        def broken_log(*a, **k):
            raise ConnectionError("lost the connection")

        handle.log = broken_log
        return handle

    monkeypatch.setattr(wandb, "init", init_with_broken_log)
    with caplog.at_level(logging.WARNING):
        run(make_cfg("logger=wandb", "logger.mode=offline", *FAST))
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2
    assert any("W&B log failed" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_an_unreachable_server_falls_back_to_offline_quickly_and_says_how_to_sync(
    make_cfg, tmp_path, caplog, monkeypatch
):
    """A compute node with a key but no route: a local port that refuses connections."""
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    run_dir = tmp_path / "run"
    hints = []
    for epochs in (1, 2):  # the second run resumes the first: two offline parts, one W&B run
        caplog.clear()
        start = time.perf_counter()
        with caplog.at_level(logging.INFO):
            run(
                make_cfg(
                    "logger=wandb", "logger.run_name=unreachable", *FAST, f"trainer.epochs={epochs}"
                )
            )
        assert time.perf_counter() - start < 60  # was 129 s of waiting, then no W&B at all
        assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
        assert any("logging offline instead" in r.getMessage() for r in caplog.records)
        hints += [r.getMessage() for r in caplog.records if "wandb sync" in r.getMessage()]
    parts = sorted((run_dir / "wandb").glob("offline-run-*"))
    run_id = (run_dir / "wandb_id").read_text().strip()
    # a part started in the same second as the previous one is named ...-<id>-1 by W&B
    assert len(parts) == 2 and all(
        re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", p.name) for p in parts
    ), parts
    assert len(hints) == 2 and all(str(p) in hints[-1] for p in parts)  # once per run, all parts
    for part in parts:
        info = run_info(next(part.glob("*.wandb")))
        assert info["name"] == "unreachable" and info["id"] == run_id


@pytest.fixture
def silent_server():
    """A W&B server that accepts every connection and never answers: its URL."""
    server = socket.create_server(("127.0.0.1", 0))
    held = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in held:
        connection.close()


def seconds_from_sync_hint_to_exit(run_dir, env: dict) -> float:
    """Run saln-train as a user does; the seconds between its `wandb sync` hint and its exit."""
    command = [str(BIN / "saln-train"), "logger=wandb", *FAST, "trainer.epochs=1",
               "trainer.progress=false", f"hydra.run.dir={run_dir}"]  # fmt: skip
    # not this process's W&B service (set by the in-process runs of earlier tests)
    inherited = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    proc = subprocess.Popen(command, env={**inherited, "OMP_NUM_THREADS": "1", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    hint = None
    for line in proc.stdout:
        if "wandb sync" in line:
            hint = time.monotonic()
    assert proc.wait(timeout=600) == 0 and hint is not None
    return time.monotonic() - hint


@pytest.mark.slow
def test_a_server_that_never_answers_costs_no_wait_at_exit(tmp_path, silent_server):
    """The run falls back to offline after W&B's init timeout, and then exits as an offline run
    does: W&B's own telemetry no longer waits on the server at exit (it added 21.6 s)."""
    offline = seconds_from_sync_hint_to_exit(tmp_path / "offline", {"WANDB_MODE": "offline"})
    silent = seconds_from_sync_hint_to_exit(
        tmp_path / "silent",
        {"WANDB_MODE": "online", "WANDB_BASE_URL": silent_server, "WANDB_API_KEY": "x" * 40},
    )
    assert (tmp_path / "silent" / "wandb").is_dir()  # it did fall back to offline
    assert silent <= offline + 5, (silent, offline)


def test_metrics_table_and_checkpoint_artifacts_on_request(make_cfg, tmp_path):
    from wandb_records import records

    run(make_cfg("logger=wandb", "logger.mode=offline", "logger.log_checkpoints=true", *FAST))
    path = wandb_file(tmp_path / "run")
    tables = [r for r in history(path) if "metrics_table/_type" in r]
    assert len(tables) == 1 and tables[0]["metrics_table/_type"] == "table-file"
    assert tables[0]["metrics_table/nrows"] == 2  # one row per epoch
    artifacts = [r.artifact for r in records(path) if r.WhichOneof("record_type") == "artifact"]
    kinds = [
        (a.type, a.name.split("-")[0], sorted(a.aliases))
        for a in artifacts
        if a.type != "run_table"
    ]
    assert kinds == [  # W&B adds `latest` to the newest version of each artifact itself
        ("checkpoint", "checkpoint", ["epoch-1", "latest"]),
        ("checkpoint", "checkpoint", ["epoch-2", "latest"]),
        ("model", "model", ["final", "latest"]),
    ], kinds


def test_a_run_whose_wandb_failed_does_not_leak_into_the_next_run(make_cfg, tmp_path, monkeypatch):
    """A sweep's jobs share one process: after a W&B failure, the next job gets its own W&B run."""
    real_init = wandb.init

    def init_with_broken_log(*args, **kwargs):
        handle = real_init(*args, **kwargs)
        handle.log = lambda *a, **k: (_ for _ in ()).throw(ConnectionError("lost the connection"))
        return handle

    monkeypatch.setattr(wandb, "init", init_with_broken_log)
    run(make_cfg("logger=wandb", "logger.mode=offline", *FAST))
    monkeypatch.undo()
    assert wandb.run is None
    cfg = make_cfg("logger=wandb", "logger.mode=offline", *FAST)
    cfg.paths.output_dir = str(tmp_path / "next")
    run(cfg)
    # the next run is its own W&B run (its own id), not the broken one continued
    assert (
        run_info(wandb_file(tmp_path / "next"))["id"]
        == (tmp_path / "next" / "wandb_id").read_text().strip()
    )
    assert (tmp_path / "next" / "wandb_id").read_text() != (
        tmp_path / "run" / "wandb_id"
    ).read_text()
