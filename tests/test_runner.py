"""The runner end to end on the offline default: files, metric keys and values, determinism,
failure handling. Runs are in-process through `saln_exp.train.run` with composed configs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import TIME_KEYS
from saln_exp.data import build_data
from saln_exp.metrics import QUANTILES, loss_stats
from saln_exp.models import build_model
from saln_exp.train import run

SPLIT_KEYS = ["acc", "loss_mean", "loss_best", "loss_worst", "loss_q50", "loss_q90", "loss_q99"]


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


# a 2-epoch run on digits with an 8x8 fcnet, training on every sample: a second or two
QUICK = (
    "selector=none",
    "model=fcnet",
    "model.hidden=64",
    "dataset.image_size=8",
    "trainer.epochs=2",
)


@pytest.fixture
def quick(make_cfg):
    """A 2-epoch run on digits with an 8x8 fcnet: a second or two."""

    def _run(*overrides):
        cfg = make_cfg(*QUICK, *overrides)
        value = run(cfg)
        return cfg, value

    return _run


def test_run_writes_every_file_and_returns_the_metric(quick, tmp_path):
    _, value = quick("dataset.val_fraction=0.2")
    run_dir = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "status.json", "checkpoint.pt"):
        assert (run_dir / name).exists(), name
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert value == pytest.approx(rows[-1]["test/acc"]) == pytest.approx(summary["final_test_acc"])
    assert summary["best_test_acc"] == max(r["test/acc"] for r in rows)
    assert summary["config"]["dataset"]["val_fraction"] == 0.2
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.paths.output_dir == str(run_dir)  # resolved, not an interpolation


def test_metric_keys_are_exactly_the_documented_ones(quick, tmp_path):
    quick("dataset.val_fraction=0.2")
    row = read_metrics(tmp_path / "run")[0]
    expected = {f"{s}/{k}" for s in ("train", "val", "test") for k in SPLIT_KEYS}
    expected |= {"ratio/acc", "ratio/loss_mean", "ratio/loss_q90", "ratio/loss_worst"}
    expected |= TIME_KEYS | {"samples/seen", "samples/backprop", "optim/steps", "epoch"}
    assert expected <= set(row)
    assert row["samples/seen"] == row["samples/backprop"]  # selector none trains on everything
    assert row["time/wall_s"] >= row["time/train_s"] + row["time/eval_s"]


def test_no_val_keys_without_a_validation_split(quick, tmp_path):
    quick()
    assert not any(k.startswith("val/") for k in read_metrics(tmp_path / "run")[0])


def test_loss_stats_match_numpy():
    rng = np.random.default_rng(0)
    losses = rng.exponential(size=1001)
    correct = rng.random(1001) < 0.7
    stats = loss_stats(torch.tensor(losses), torch.tensor(correct), "test")
    assert stats["test/acc"] == pytest.approx(correct.mean())
    assert stats["test/loss_mean"] == pytest.approx(losses.mean())
    assert stats["test/loss_best"] == pytest.approx(losses.min())
    assert stats["test/loss_worst"] == pytest.approx(losses.max())
    for name, q in QUANTILES.items():
        assert stats[f"test/loss_{name}"] == pytest.approx(np.quantile(losses, q))


def test_logged_test_metrics_match_a_numpy_evaluation_of_the_saved_model(quick, tmp_path):
    cfg, _ = quick()
    run_dir = tmp_path / "run"
    data = build_data(cfg.dataset, cfg.paths)
    model = build_model(cfg.model, data.in_shape, data.num_classes)
    model.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"])
    model.eval()
    with torch.no_grad():
        logits = model(data.pipeline(data.test.images, train=False)).double().numpy()
    y = data.test.targets.numpy()
    shifted = logits - logits.max(axis=1, keepdims=True)
    ce = -(shifted[np.arange(len(y)), y] - np.log(np.exp(shifted).sum(axis=1)))
    last = read_metrics(run_dir)[-1]
    assert last["test/acc"] == pytest.approx((logits.argmax(1) == y).mean())
    assert last["test/loss_mean"] == pytest.approx(ce.mean(), rel=1e-5)
    assert last["test/loss_worst"] == pytest.approx(ce.max(), rel=1e-5)
    assert last["test/loss_q90"] == pytest.approx(np.quantile(ce, 0.9), rel=1e-5)
    assert last["ratio/loss_mean"] == pytest.approx(
        last["test/loss_mean"] / last["train/loss_mean"]
    )


def test_same_seed_same_metrics_other_seed_other_metrics(make_cfg, tmp_path):
    def metrics(seed, name):
        cfg = make_cfg(*QUICK, f"seed={seed}")
        cfg.paths.output_dir = str(tmp_path / name)
        run(cfg)
        return without_time(read_metrics(tmp_path / name))

    first, again, other = metrics(0, "a"), metrics(0, "b"), metrics(1, "c")
    assert first == again
    assert first != other


def test_train_subset_evaluates_a_fixed_subset(quick, tmp_path):
    quick("eval.train_subset=100")
    assert read_metrics(tmp_path / "run")[0]["train/acc"] * 100 == pytest.approx(
        round(read_metrics(tmp_path / "run")[0]["train/acc"] * 100)
    )


def test_seed_null_draws_and_records_a_seed(quick, tmp_path):
    quick("seed=null")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert isinstance(summary["seed"], int)
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").seed == summary["seed"]


def test_diverging_loss_stops_with_a_clear_message_and_no_summary(quick, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quick("optimizer.lr=1e12", "optimizer.momentum=0.99")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss became" in err[0] and "optimizer.lr" in err[0]
    assert not (tmp_path / "run" / "summary.json").exists()
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("selector.filter_ratio=1.0", "selector.filter_ratio must be"),
        ("selector.filter_ratio=-0.1", "selector.filter_ratio must be"),
        ("dataset.batch_size=0", "dataset.batch_size must be"),
        ("trainer.epochs=0", "trainer.epochs must be"),
        ("dataset.val_fraction=1.0", "dataset.val_fraction must be"),
        ("dataset.label_noise.kind=weird", "dataset.label_noise.kind must be"),
        ("device=cuda:3", "device=cuda:3"),
        ("metric=test/nonsense", "metric must look like"),
        ("selector=saln selector.features=colour", "selector.features must be one of"),
        ("selector=saln selector.similarity=euclid", "selector.similarity must be one of"),
        ("selector=topq_loss selector.q=2", "selector.q must be"),
        ("model=lenet dataset.image_size=8", "model=lenet needs inputs of at least 16x16"),
        ("seed=-1", "seed must be an integer in [0, 2**32)"),
        (f"seed={2**40}", "seed must be an integer in [0, 2**32)"),
        ("optimizer.lr=-1", "optimizer.lr must be > 0"),
        ("optimizer.lr=0", "optimizer.lr must be > 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(make_cfg, tmp_path, capsys, override, needle):
    cfg = make_cfg(*override.split())
    with pytest.raises(SystemExit) as exit_info:
        run(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and needle in err[0]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_finite_or_null_numbers_in_jsonl(quick, tmp_path):
    quick()
    for row in read_metrics(tmp_path / "run"):
        for value in row.values():
            assert value is None or not isinstance(value, float) or math.isfinite(value)


def test_resume_of_a_directory_without_a_run_is_refused_and_writes_nothing(
    make_cfg, tmp_path, capsys
):
    typo = tmp_path / "outputs" / "runs" / "typo"
    with pytest.raises(SystemExit) as exit_info:
        run(make_cfg(f"resume={typo}"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no run" in err[0] and str(typo) in err[0]
    assert not typo.exists() and not (tmp_path / "run").exists()
