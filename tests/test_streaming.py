"""Folders streamed from disk (`dataset.storage`): chosen by size, read through DataLoader
workers, the same numbers as the same run in memory, stopped and resumed like any run, and a bad
file one line naming it."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_datasets_more import one_line, write_folder

from conftest import BIN, TIME_KEYS, run_cli
from saln_exp import rundir, stop
from saln_exp.data import build_data
from saln_exp.data.stream import ImageFiles, worker_deaths_reported
from saln_exp.errors import ConfigError, DataCorruptError, DataReaderError
from saln_exp.features import extract

SIZES = [(16, 16), (20, 12)]  # even-numbered files are written at 16x16: no resize, exact pixels


def write_tree(data_dir: Path, per_class: int = 12, test: int = 4) -> dict:
    root = data_dir / "imagefolder"
    train = write_folder(root / "train", dict.fromkeys("abc", per_class), size=SIZES)
    write_folder(root / "test", dict.fromkeys("abc", test), seed=1)
    return train


def folder_cfg(make_cfg, *extra: str):
    return make_cfg("dataset=imagefolder", "dataset.image_size=16", "dataset.workers=0", *extra)


def both(make_cfg, *extra: str):
    """The same dataset decoded into memory and streamed from its files."""
    memory = build_data(*_parts(folder_cfg(make_cfg, "dataset.storage=memory", *extra)))
    streamed = build_data(*_parts(folder_cfg(make_cfg, "dataset.storage=stream", *extra)))
    return memory, streamed


def _parts(cfg):
    return cfg.dataset, cfg.paths


# ---------------------------------------------------------------- what a streamed split holds


def test_a_streamed_split_reads_the_pixels_of_the_decoded_one(make_cfg, tmp_path):
    written = write_tree(tmp_path / "data")
    memory, streamed = both(make_cfg, "dataset.val_fraction=0.25", "dataset.workers=2")
    assert isinstance(streamed.train.images, ImageFiles) and streamed.train.streamed
    assert isinstance(memory.train.images, torch.Tensor) and not memory.train.streamed
    for name, split in streamed.splits().items():
        other = memory.splits()[name]
        assert torch.equal(split.read(slice(None)), other.images), name
        assert torch.equal(split.targets, other.targets) and torch.equal(
            split.indices, other.indices
        )
    # the oracle is the file itself: source index 0 is a/0.png, written at 16x16 (ImageFolder order)
    pixels = torch.from_numpy(written["a"][0]).permute(2, 0, 1)
    holder = next(s for s in (streamed.train, streamed.val) if bool((s.indices == 0).any()))
    position = int(torch.nonzero(holder.indices == 0).flatten()[0])
    assert torch.equal(holder.read(torch.tensor([position]))[0], pixels)
    assert streamed.in_shape == memory.in_shape == (3, 16, 16)
    assert torch.equal(streamed.pipeline.mean, memory.pipeline.mean)
    assert torch.equal(streamed.pipeline.std, memory.pipeline.std)
    # in chunks through two workers, in order; a carved subset reads its own files
    chunks = [torch.tensor([5, 0, 3]), torch.arange(7, 20), torch.tensor([1])]
    got = list(streamed.train.read_batches(chunks))
    assert all(torch.equal(g, memory.train.images[c]) for g, c in zip(got, chunks, strict=True))
    picked = torch.tensor([9, 2, 4])
    assert torch.equal(streamed.train.take(picked).read(slice(None)), memory.train.images[picked])


def test_a_carved_test_split_streams_the_same_files(make_cfg, tmp_path):
    root = tmp_path / "data" / "imagefolder"
    write_folder(root / "train", dict.fromkeys("abc", 10), size=SIZES)
    memory, streamed = both(make_cfg, "dataset.test_fraction=0.3")
    assert streamed.test.streamed and len(streamed.test) == len(memory.test) == 9
    assert torch.equal(streamed.test.read(slice(None)), memory.test.images)
    assert torch.equal(streamed.train.read(slice(None)), memory.train.images)


def test_model_inputs_and_features_of_a_streamed_split_are_the_decoded_ones(make_cfg, tmp_path):
    write_tree(tmp_path / "data")
    memory, streamed = both(make_cfg, "dataset.val_fraction=0.25")
    chunks = [torch.arange(0, 10), torch.arange(10, len(memory.train))]
    for train in (False, True):  # True: random flip + crop, drawn as each batch is asked for
        torch.manual_seed(3)
        expected = [memory.pipeline.batch(memory.train, c, train) for c in chunks]
        torch.manual_seed(3)
        got = list(streamed.pipeline.batches(streamed.train, chunks, train))
        assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True)), train
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5))
    cpu = torch.device("cpu")
    assert torch.equal(
        extract(backbone, streamed, None, 7, cpu), extract(backbone, memory, None, 7, cpu)
    )


# ---------------------------------------------------------------- which storage, by size


def test_auto_streams_above_max_decoded_gib_and_memory_refuses(make_cfg, tmp_path, caplog):
    write_tree(tmp_path / "data")  # 48 images at 3x16x16: 36 KiB
    small = build_data(*_parts(folder_cfg(make_cfg)))  # storage: auto by default
    assert not small.train.streamed
    caplog.set_level(logging.INFO, logger="saln_exp.data.folder")
    tiny = ("dataset.max_decoded_gib=0.00001",)
    large = build_data(*_parts(folder_cfg(make_cfg, *tiny)))
    assert large.train.streamed and large.test.streamed
    assert "48 images at 3x16x16 decode to 36.0 KiB" in caplog.text
    assert "streaming them from disk" in caplog.text
    with pytest.raises(ConfigError) as err:
        build_data(*_parts(folder_cfg(make_cfg, "dataset.storage=memory", *tiny)))
    assert "dataset.storage=auto to stream" in one_line(err)
    with pytest.raises(ConfigError, match=r"dataset\.storage must be one of"):
        build_data(*_parts(folder_cfg(make_cfg, "dataset.storage=disk")))


def test_streamed_training_statistics_are_computed_once_and_cached(make_cfg, tmp_path, count_opens):
    write_tree(tmp_path / "data")
    cfg = folder_cfg(make_cfg, "dataset.storage=stream")
    first = build_data(*_parts(cfg))
    assert len(count_opens) == 36  # the statistics pass decodes train/ once
    count_opens.clear()
    second = build_data(*_parts(cfg))
    assert count_opens == [] and torch.equal(first.pipeline.mean, second.pipeline.mean)
    memory = build_data(*_parts(folder_cfg(make_cfg, "dataset.storage=memory")))
    assert torch.equal(second.pipeline.std, memory.pipeline.std)  # the decoded images' statistics


# ---------------------------------------------------------------- a bad file


def test_an_undecodable_file_met_while_streaming_is_one_line_naming_it(make_cfg, tmp_path):
    write_tree(tmp_path / "data")
    bad = tmp_path / "data" / "imagefolder" / "train" / "b" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a PNG")
    given = ("dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]")
    data = build_data(
        *_parts(folder_cfg(make_cfg, "dataset.storage=stream", "dataset.workers=2", *given))
    )
    chunks = [torch.arange(i, i + 6) for i in range(0, len(data.train), 6)]
    with pytest.raises(DataCorruptError) as err:
        list(data.train.read_batches(chunks))
    line = one_line(err)
    assert str(bad) in line and "cannot be read as an image" in line and "Traceback" not in line
    with pytest.raises(
        DataCorruptError, match=r"3\.png"
    ):  # null mean / std: in the statistics pass
        build_data(*_parts(folder_cfg(make_cfg, "dataset.storage=stream")))


# ---------------------------------------------------------------- workers and signals


def test_a_signal_ends_the_decoding_workers_quietly_and_the_reader_says_it_stopped(tmp_path):
    root = tmp_path / "images"
    write_folder(root, {"a": 40})
    files = ImageFiles(sorted(str(p) for p in root.glob("a/*.png")), 3, 16, workers=2, name="t")
    chunks = [[i] for i in range(40)]
    others = set(multiprocessing.active_children())  # an earlier test's loader not yet collected
    batches = files.batches(chunks)
    next(batches)  # the workers run
    workers = [p for p in multiprocessing.active_children() if p not in others]
    assert len(workers) == 2
    for worker in workers:
        os.kill(worker.pid, signal.SIGTERM)  # as a group signal reaches them
    for worker in workers:
        worker.join(timeout=10)
        assert worker.exitcode == 0  # quiet, like PyTorch's workers on Ctrl-C
    stop.STATE.requested = signal.SIGTERM
    try:
        with pytest.raises(stop.ReaderStopped):
            for _ in batches:  # prefetched chunks first, then the missing workers are noticed
                pass
    finally:
        stop.STATE.requested = None
    unasked = files.batches(chunks)
    next(unasked)
    # no stop asked: one error naming what to change, however PyTorch noticed (its queue poll,
    # inside the reader, names the split; its SIGCHLD handler raises at whatever line runs)
    died = r"a worker decoding its images died .*workers"
    with pytest.raises(DataReaderError, match=died), worker_deaths_reported():  # as in training
        for worker in set(multiprocessing.active_children()) - others:
            os.kill(worker.pid, signal.SIGKILL)
        list(unasked)
    time.sleep(0.5)  # a SIGCHLD handler still watching the dead workers would raise by now


def test_a_worker_killed_while_the_training_step_runs_ends_the_run_with_the_same_line(tmp_path):
    """The system's OOM killer does not wait for the loader to be read: PyTorch's SIGCHLD
    handler raises in the middle of the training step, outside the reader."""
    root = tmp_path / "images"
    write_folder(root, {"a": 40})
    files = ImageFiles(sorted(str(p) for p in root.glob("a/*.png")), 3, 16, workers=2, name="t")
    others = set(multiprocessing.active_children())
    batches = files.batches([[i] for i in range(40)])
    next(batches)
    workers = [p for p in multiprocessing.active_children() if p not in others]
    died = (r"^a streamed split: a worker decoding its images died "
            r"\(DataLoader worker \(pid \d+\) is killed by signal: Killed")  # fmt: skip
    with pytest.raises(DataReaderError, match=died), worker_deaths_reported():
        os.kill(workers[0].pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the training step, interrupted by the handler
            sum(range(1000))
    batches.close()  # the reader ends its workers and stops watching them
    workers[1].join(timeout=10)
    assert not workers[1].is_alive()
    time.sleep(0.5)


def _metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIME_KEYS}
            for row in rundir.read_jsonl(run_dir / rundir.METRICS)]  # fmt: skip


def _run_args(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [
        "dataset=imagefolder", f"paths.data_dir={tmp_path / 'data'}", "dataset.image_size=16",
        f"paths.cache_dir={tmp_path / ('cache_' + name)}", f"paths.log_dir={tmp_path / 'logs'}",
        "model=fcnet", "model.hidden=32", "dataset.batch_size=8", "dataset.val_fraction=0.2",
        "logger=none", "trainer.progress=false", "trainer.threads=1",
        f"hydra.run.dir={tmp_path / name}", *extra,
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("selector", ["topk_loss", "accuracy_epoch"])
def test_a_streamed_run_gives_the_numbers_of_the_run_in_memory(tmp_path, selector):
    """Augmentation on (imagefolder's default), a validation carve, and for epochwise filtering
    the whole-split classification: streamed through two workers, every number is the same; and
    a run that decodes the folder equals one that reads the decode cache."""
    write_tree(tmp_path / "data", per_class=16)
    common = (f"selector={selector}", "trainer.epochs=3")
    runs = {
        "decoding": ("dataset.storage=memory",),
        "cached": ("dataset.storage=memory",),
        "streamed": ("dataset.storage=stream", "dataset.workers=2"),
    }
    for name, extra in runs.items():
        cache = "cache_memory" if name != "streamed" else "cache_streamed"
        args = [
            a.replace("cache_" + name, cache) for a in _run_args(tmp_path, name, *common, *extra)
        ]
        proc = run_cli(*args, env={"OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
    decoding, cached, streamed = (_metrics(tmp_path / name) for name in runs)
    assert len(decoding) == 3
    assert decoding == cached
    assert streamed == cached


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_group_stops_a_streamed_run_which_then_resumes_exactly(
    tmp_path, signum
):
    """Ctrl-C in a terminal and Slurm's scancel signal every process of the run, its decoding
    workers included: the run still stops after a batch with a checkpoint and one line, and the
    rerun (here reading the pixels from memory: storage is not part of the run) ends as an
    uninterrupted run does."""
    write_tree(tmp_path / "data", per_class=40)
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    common = ("selector=topk_loss", "trainer.epochs=12", "dataset.workers=2")
    straight = run_cli(*_run_args(tmp_path, "straight", *common, "dataset.storage=stream"))
    assert straight.returncode == 0, straight.stderr[-3000:]

    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen(
        [str(BIN / "saln-train"), *_run_args(tmp_path, "stopped", *common, "dataset.storage=stream")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 300
    metrics_file = run_dir / rundir.METRICS
    while not (metrics_file.exists() and metrics_file.read_text().strip()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    time.sleep(0.2)  # into epoch 2, with the workers decoding
    os.killpg(proc.pid, signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr and "exited unexpectedly" not in stderr
    interrupted = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    assert len(interrupted) == 1 and "resume" in interrupted[0]
    status = rundir.read_json(run_dir / rundir.STATUS)
    assert status["status"] == "interrupted"
    assert len(_metrics(run_dir)) < 12

    again = run_cli(*_run_args(tmp_path, "stopped", *common, "dataset.storage=memory"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert _metrics(run_dir) == _metrics(tmp_path / "straight")


@pytest.mark.slow
def test_cli_streamed_corrupt_image_is_one_line_exit_2(tmp_path):
    write_tree(tmp_path / "data")
    bad = tmp_path / "data" / "imagefolder" / "test" / "c" / "1.png"
    bad.write_bytes(b"GIF89a broken")
    proc = run_cli(*_run_args(tmp_path, "run", "dataset.storage=stream", "dataset.workers=2",
                              "trainer.epochs=1"), env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if str(bad) in line]
    assert len(lines) == 1 and "cannot be read as an image" in lines[0]
    assert json.loads((tmp_path / "run" / rundir.STATUS).read_text())["status"] == "failed"


def test_split_positions_may_be_tensors_slices_or_arrays(tmp_path):
    root = tmp_path / "images"
    write_folder(root, {"a": 5})
    paths = sorted(str(p) for p in root.glob("a/*.png"))
    files = ImageFiles(paths, 3, 16, workers=0, name="t")
    whole = files.read(slice(None))
    assert whole.shape == (5, 3, 16, 16) and files.shape == (5, 3, 16, 16)
    assert torch.equal(files.read(np.array([4, 1])), whole[[4, 1]])
    assert torch.equal(files.subset(torch.tensor([3, 0])).read([1]), whole[[0]])
    assert torch.equal(ImageFiles.concat([files.subset([0]), files.subset([2])]).read(slice(None)),
                       whole[[0, 2]])  # fmt: skip


@pytest.mark.slow
def test_two_processes_streaming_a_folder_give_one_process_in_memory(tmp_path):
    """Each rank streams the whole candidate batch through its own workers (selection is
    global); the numbers are those of one process reading decoded pixels."""
    from test_distributed import ABS, REL, _metrics, _run, assert_same_metrics

    write_tree(tmp_path / "data", per_class=16)
    common = [
        "dataset=imagefolder", f"paths.data_dir={tmp_path / 'data'}",
        f"paths.cache_dir={tmp_path / 'cache'}", f"paths.log_dir={tmp_path / 'logs'}",
        "selector=topk_loss", "selector.scope=global", "trainer.epochs=2",
        "dataset.batch_size=8", "dataset.val_fraction=0.2",
    ]  # fmt: skip
    _run(tmp_path / "one", *common, "dataset.storage=memory")
    _run(tmp_path / "two", *common, "dataset.storage=stream", "dataset.workers=1", procs=2)
    assert_same_metrics(_metrics(tmp_path / "one"), _metrics(tmp_path / "two"), REL, ABS)
