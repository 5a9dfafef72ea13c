"""Selectors inside real runs: accumulation, caches of features and reference models, label-noise
diagnostics, and every selector end to end through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import saln_exp.features
import saln_exp.reference
from conftest import run_cli
from saln_exp.selectors import SELECTORS
from saln_exp.train import run

SMALL = ("model=fcnet", "model.hidden=32", "dataset.image_size=8")


def metrics_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_accumulation_trains_exactly_batch_size_every_step(make_cfg, tmp_path):
    run(
        make_cfg(
            *SMALL,
            "selector=accuracy",
            "dataset.batch_size=32",
            "selector.candidate_batch_size=64",
            "trainer.epochs=3",
        )
    )
    rows = metrics_of(tmp_path / "run")
    kept_total = sum(
        r["select/kept_frac"] * (r["samples/seen"] - p["samples/seen"])
        for r, p in zip(rows, [{"samples/seen": 0}, *rows], strict=False)
    )
    last = rows[-1]
    assert last["samples/backprop"] == 32 * last["optim/steps"]  # stable batch size
    overflow = sum(r["select/overflow"] for r in rows)
    pending = kept_total - last["samples/backprop"] - overflow
    assert 0 <= pending < 32 + 1e-6  # kept = trained + discarded overflow + still accumulating
    assert all(r["select/raw_batches_per_step"] >= 1 for r in rows if r["optim/steps"])


def test_accumulation_never_falls_back_and_keeps_only_the_errors(make_cfg, tmp_path):
    """Small raw batches of a model that gets most digits right: many hold no error at all. With
    accumulation those add nothing (ASSIST 3.3.2), so the kept fraction is the error rate and no
    uniform fallback is ever drawn."""
    run(
        make_cfg(
            *SMALL,
            "selector=accuracy",
            "dataset.batch_size=32",
            "selector.candidate_batch_size=8",
            "trainer.epochs=4",
        )
    )
    rows = metrics_of(tmp_path / "run")
    assert all(r["select/fallbacks"] == 0 for r in rows)
    late = rows[-1]
    assert late["train/acc"] > 0.8  # most raw batches of 8 are error-free by now
    assert late["select/kept_frac"] == pytest.approx(late["select/error_frac"], abs=0.01)
    assert late["select/raw_batches_per_step"] > 4  # 32 errors take many raw batches of 8


def test_without_accumulation_filters_train_on_variable_batches(make_cfg, tmp_path):
    run(make_cfg(*SMALL, "selector=accuracy", "selector.accumulate=false", "trainer.epochs=2"))
    rows = metrics_of(tmp_path / "run")
    assert rows[-1]["samples/backprop"] < rows[-1]["samples/seen"]
    assert rows[-1]["select/overflow"] == 0


def test_accuracy_epoch_trains_only_on_what_was_misclassified_at_epoch_start(make_cfg, tmp_path):
    run(make_cfg(*SMALL, "selector=accuracy_epoch", "trainer.epochs=3"))
    rows = metrics_of(tmp_path / "run")
    first_epoch = rows[0]
    assert first_epoch["select/epoch_kept_frac"] > 0.5  # an untrained model gets most wrong
    assert rows[-1]["select/epoch_kept_frac"] < first_epoch["select/epoch_kept_frac"]
    per_epoch = [
        b - a
        for a, b in zip(
            [0] + [r["samples/seen"] for r in rows], [r["samples/seen"] for r in rows], strict=False
        )
    ]
    assert per_epoch[-1] < per_epoch[0]  # an epoch is one pass over the filtered set


def test_pretrained_features_are_extracted_once_and_cached(make_cfg, tmp_path, monkeypatch):
    overrides = (
        *SMALL, "selector=saln", "selector.features=pretrained", "selector.backbone=resnet18",
        "selector.backbone_weights=null", "selector.feature_size=32", "trainer.epochs=1",
        "dataset=synthetic", "dataset.like=cifar10", "dataset.n_train=64", "dataset.n_test=32",
    )  # fmt: skip
    calls = []
    real_extract = saln_exp.features.extract
    monkeypatch.setattr(
        saln_exp.features, "extract", lambda *a, **k: calls.append(1) or real_extract(*a, **k)
    )
    cfg = make_cfg(*overrides)
    run(cfg)
    assert len(calls) == 1
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 1
    cfg2 = make_cfg(*overrides)
    cfg2.paths.output_dir = str(tmp_path / "second")
    run(cfg2)
    assert len(calls) == 1, "the second run must load the cache, not extract again"


def test_pretrained_features_offline_without_weights_is_one_clear_error(
    make_cfg, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = make_cfg(*SMALL, "selector=saln", "selector.features=pretrained", "trainer.epochs=1")
    with pytest.raises(SystemExit) as exit_info:
        run(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "resnet50" in err and str(tmp_path / "torch") in err and "selector.download=true" in err


@pytest.mark.parametrize("name", ["jest", "rho"])
def test_reference_model_is_trained_once_and_cached(make_cfg, tmp_path, monkeypatch, name):
    fits = []
    real_fit = saln_exp.reference.fit_reference
    monkeypatch.setattr(
        saln_exp.reference, "fit_reference", lambda *a, **k: fits.append(1) or real_fit(*a, **k)
    )
    overrides = (
        *SMALL,
        f"selector={name}",
        "selector.reference.epochs=2",
        "dataset.val_fraction=0.2",
        "trainer.epochs=1",
    )
    run(make_cfg(*overrides))
    cfg2 = make_cfg(*overrides, "seed=0")
    cfg2.paths.output_dir = str(tmp_path / "second")
    run(cfg2)
    assert len(fits) == 1
    assert len(list((tmp_path / "cache" / "reference").glob("*.pt"))) == 1
    cfg3 = make_cfg(*overrides, "selector.reference.epochs=3")  # another recipe, another model
    cfg3.paths.output_dir = str(tmp_path / "third")
    run(cfg3)
    assert len(fits) == 2


def test_reference_losses_check_label_order(make_cfg):
    from saln_exp.config import learner_recipe, plain
    from saln_exp.data import build_data
    from saln_exp.models import build_model
    from saln_exp.reference import ReferenceLosses
    from saln_exp.selectors import Batch, RunContext

    cfg = make_cfg(*SMALL, "dataset.val_fraction=0.2")
    data = build_data(cfg.dataset, cfg.paths)
    model = build_model(cfg.model, data.in_shape, data.num_classes)
    ctx = RunContext(
        data=data,
        model=model,
        device=torch.device("cpu"),
        cache_dir=cfg.paths.cache_dir,
        run_dir=cfg.paths.output_dir,
        dataset=plain(cfg.dataset),
        learner=learner_recipe(cfg),
    )
    lookup = ReferenceLosses.prepare(ctx, {"epochs": 1})
    pos = torch.arange(16)
    batch = Batch(
        data.train.indices[pos],
        data.pipeline(data.train.images[pos], train=False),
        data.train.targets[pos],
    )
    assert lookup(batch).shape == (16,)
    shuffled = Batch(batch.index, batch.x, batch.y.roll(1))
    with pytest.raises(RuntimeError, match="out of order"):
        lookup(shuffled)


def test_label_noise_diagnostics_report_the_noisy_fraction_kept(make_cfg, tmp_path):
    run(make_cfg(*SMALL, "selector=topk_loss", "dataset.label_noise.rate=0.3", "trainer.epochs=3"))
    rows = metrics_of(tmp_path / "run")
    assert all(0.0 <= r["select/noisy_kept_frac"] <= 1.0 for r in rows)
    assert rows[0]["select/noisy_batch_frac"] == pytest.approx(0.3, abs=0.02)
    # loss-based selection chases the mislabelled samples once the clean ones are learned
    assert rows[-1]["select/noisy_kept_frac"] > rows[-1]["select/noisy_batch_frac"]
    assert all(r["select/loss_kept"] >= r["select/loss_dropped"] for r in rows)


@pytest.mark.slow
def test_every_selector_runs_one_epoch_through_the_cli_on_digits_and_a_cifar_shaped_stand_in(
    tmp_path,
):
    names = ",".join(sorted(SELECTORS))
    out = run_cli(
        "-m", f"selector={names}", "dataset=digits,synthetic", "+dataset.like=cifar10",
        "trainer.epochs=1", "trainer.progress=false", "logger=none", "eval.batch_size=512",
        "dataset.val_fraction=0.2",
        f"hydra.sweep.dir={tmp_path}/sweep", f"paths.cache_dir={tmp_path}/cache",
        timeout=1500,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert sweep["n_jobs"] == 2 * len(SELECTORS) and sweep["n_failed"] == 0
    seen = {(j["overrides"][0], j["overrides"][1]) for j in sweep["jobs"]}
    assert len(seen) == 2 * len(SELECTORS)
