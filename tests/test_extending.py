"""docs/extending.md's examples work as printed: the selector and the model written there (one
.py, one .yaml each) register themselves, compose and train, the selector gets its own colour, and
a selector variant (one .yaml) composes the selector it varies. Datasets and pruning methods
register themselves the same way, and no module below the runner reads a Hydra config."""

from __future__ import annotations

import ast
import json
import re
import types

import pytest
import torch

from saln_exp import PROJECT_ROOT, rng
from saln_exp.data import DATASETS, SourceData, build_data, register_dataset, shape_of
from saln_exp.fit import Recipe
from saln_exp.models import MODELS
from saln_exp.prune import METHODS, PruneJob, prune_dataset, register_method
from saln_exp.prune.common import PruneResult
from saln_exp.selectors import base
from saln_exp.train import run

DOC = (PROJECT_ROOT / "docs" / "extending.md").read_text()


def code_block(after: str, language: str) -> str:
    """The first ```language block after the line mentioning `after`."""
    start = DOC.index(after)
    return re.search(rf"```{language}\n(.*?)```", DOC[start:], re.S).group(1)


@pytest.fixture
def keep_hardest():
    """The documented selector module, defined as the package would import it."""
    module = types.ModuleType("saln_exp.selectors.keep_hardest")
    exec(compile(code_block("saln_exp/selectors/keep_hardest.py", "python"), "keep_hardest", "exec"),
         module.__dict__)  # fmt: skip
    yield module.KeepHardest
    base.REGISTRY.pop("keep_hardest", None)


def test_the_documented_selector_is_one_py_and_one_yaml(keep_hardest, make_cfg, tmp_path):
    assert base.REGISTRY["keep_hardest"] is keep_hardest  # defining it registered it
    others = [cls.style for name, cls in base.REGISTRY.items() if name != "keep_hardest"]
    assert keep_hardest.style[0] not in {c for c, _ in others}  # the example's style is its own
    assert keep_hardest.style[1] not in {m for _, m in others}
    conf = tmp_path / "conf" / "selector"
    conf.mkdir(parents=True)
    (conf / "keep_hardest.yaml").write_text(code_block("conf/selector/keep_hardest.yaml", "yaml"))
    cfg = make_cfg(
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "selector=keep_hardest",
        "model=fcnet", "model.hidden=16", "dataset.image_size=8", "trainer.epochs=1",
    )  # fmt: skip
    run(cfg)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["select/kept_frac"] == pytest.approx(0.5, abs=0.02)  # filter_ratio 0.5
    assert "select/loss_kept" in record  # its diagnostics are logged
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["selector_choice"] == "keep_hardest"


def test_the_documented_variant_composes_the_selector_it_varies(make_cfg):
    variant = code_block("conf/selector/saln_paper.yaml", "yaml")
    assert variant.strip() in (PROJECT_ROOT / "conf/selector/saln_paper.yaml").read_text()
    cfg = make_cfg("selector=saln_paper")
    assert (cfg.selector.name, cfg.selector.features, cfg.selector.backbone) == (
        "saln",
        "pretrained",
        "resnet50",
    )
    assert cfg.selector.similarity == "cosine"  # the rest comes from saln.yaml


def test_the_documented_run_artifact_line_is_rundir_s():
    line = code_block("one line in `saln_exp/rundir.py`", "python").strip()
    assert line in (PROJECT_ROOT / "saln_exp" / "rundir.py").read_text()


# -- datasets, models, pruning methods: one module each, registered as selectors are ---------------
@pytest.fixture
def mlp2():
    """The documented model module, defined as the package would import it."""
    module = types.ModuleType("saln_exp.models.mlp2")
    exec(
        compile(code_block("saln_exp/models/<name>.py", "python"), "mlp2", "exec"), module.__dict__
    )
    yield module.MLP2
    MODELS.pop("mlp2", None)


def test_the_documented_model_is_one_py_and_one_yaml(mlp2, make_cfg, tmp_path):
    assert MODELS["mlp2"] is mlp2  # defining it registered it
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "mlp2.yaml").write_text(code_block("conf/model/mlp2.yaml", "yaml"))
    cfg = make_cfg(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=mlp2",
                   "selector=topk_loss", "dataset.image_size=8", "trainer.epochs=1")  # fmt: skip
    run(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model"] == "mlp2" and summary["config"]["model"]["hidden"] == 64
    assert summary["final_test_acc"] > 0.3  # it trained (10 classes: chance is 0.1)


def test_a_dataset_and_a_pruning_method_register_themselves(tmp_path):
    """What a dataset or pruning module does when its package imports it, then the runner's entry
    points find them by name, from plain values."""

    @register_dataset("two_blobs", shape=(1, 4, 2))
    def load(options, data_dir, cache_dir=None):
        g = torch.Generator().manual_seed(options["split_seed"])
        y = torch.arange(40) % 2
        x = y.view(-1, 1, 1, 1) + 0.1 * torch.rand(40, 1, 4, 4, generator=g)
        return SourceData(x[:30], y[:30], x[30:], y[30:], 2, (0.5,), (0.5,))

    @register_method("keep_even", check=lambda options: None, stream_offset=4_001)
    def keep_even(job, data, device):
        keep = (data.train.indices % 2 == 0).numpy()
        return PruneResult(keep, keep.astype(float))

    try:
        dataset = {"name": "two_blobs", "val_fraction": 0.0, "split_seed": 0,
                   "label_noise": {"rate": 0.0, "kind": "symmetric"}}  # fmt: skip
        assert shape_of(dataset) == (1, 4, 2)
        data = build_data(dataset, {"data_dir": str(tmp_path)})
        assert len(data.train) == 30 and data.num_classes == 2
        learner = Recipe(model={"name": "fcnet", "hidden": 4}, optimizer={}, batch_size=8, seed=0)
        job = PruneJob({"name": "keep_even", "epochs": 1, "cache": False}, learner, dataset, "")
        pruned, record = prune_dataset(job, data, torch.device("cpu"), tmp_path / "run")
        assert record["prune/kept"] == 15 and (pruned.train.indices % 2 == 0).all()
    finally:
        DATASETS.pop("two_blobs", None)
        METHODS.pop("keep_even", None)
        rng.STREAM_OFFSETS.pop("prune/keep_even", None)


def test_no_module_below_the_runner_reads_a_hydra_config():
    """Hydra stays at the edge (train.py, config.py): selectors, models, datasets and pruning
    methods take plain values, so each is usable without Hydra."""
    for package in ("selectors", "models", "data", "prune"):
        for path in sorted((PROJECT_ROOT / "saln_exp" / package).glob("*.py")):
            imported = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module:
                    imported.add(node.module.split(".")[0])
            assert not imported & {"omegaconf", "hydra"}, path
