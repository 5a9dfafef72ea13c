"""docs/extending.md's examples work as printed: the selector written there (one .py, one .yaml)
registers itself, composes, trains and gets its own colour, and a selector variant (one .yaml)
composes the selector it varies."""

from __future__ import annotations

import json
import re
import types

import pytest

from saln_exp import PROJECT_ROOT
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
