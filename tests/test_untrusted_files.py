"""Files someone else may have written (a shared run, sweep or cache directory) are read without
running code: a crafted pickle that would create a file must not create it, anywhere we load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saln_exp import PROJECT_ROOT
from saln_exp.cache import load_or_compute
from saln_exp.images import load_example
from saln_exp.safe_load import load_plain
from saln_exp.train import run

SMALL = ("model=fcnet", "model.hidden=16", "dataset.image_size=8", "selector=none")


class Payload:
    """Unpickling this calls open(marker, "w"): the file appears only if code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"progress": Payload(marker), "model": torch.zeros(1)}, path)
    return path


@pytest.mark.parametrize("name", ["checkpoint.pt", "checkpoint.prev.pt"])
def test_resume_never_runs_a_crafted_checkpoint(make_cfg, tmp_path, capsys, name):
    marker = tmp_path / "pwned"
    crafted(tmp_path / "run" / name, marker)
    with pytest.raises(SystemExit) as exit_info:
        run(make_cfg(*SMALL, "trainer.epochs=1"))
    assert exit_info.value.code == 2
    assert not marker.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no readable checkpoint" in err


def test_the_report_never_runs_a_crafted_selection_example(tmp_path, caplog):
    marker = tmp_path / "pwned"
    crafted(tmp_path / "selection_example.pt", marker)
    assert load_example(tmp_path) is None
    assert not marker.exists()
    assert any("unreadable" in r.getMessage() for r in caplog.records)


def test_a_crafted_cache_entry_is_a_warning_and_a_recomputation(tmp_path, caplog):
    marker = tmp_path / "pwned"
    path = crafted(tmp_path / "cache" / "features" / "key.pt", marker)
    value, from_cache = load_or_compute(
        path,
        "pretrained features",
        load_plain,
        lambda: torch.ones(2),
        lambda t, tmp: torch.save(t, tmp),
    )
    assert not from_cache and torch.equal(value, torch.ones(2))
    assert torch.equal(load_plain(path), torch.ones(2))  # the recomputed entry replaced it
    assert not marker.exists()
    assert any("computing it again" in r.getMessage() for r in caplog.records)


def test_a_crafted_reference_cache_is_retrained_not_run(make_cfg, tmp_path, caplog):
    cfg = make_cfg(*SMALL, "selector=rho", "selector.reference.epochs=1", "trainer.epochs=1")
    run(cfg)
    (cached,) = (tmp_path / "cache" / "reference").glob("*.pt")
    marker = tmp_path / "pwned"
    crafted(cached, marker)
    again = make_cfg(*SMALL, "selector=rho", "selector.reference.epochs=1", "trainer.epochs=1")
    again.paths.output_dir = str(tmp_path / "again")
    run(again)
    assert not marker.exists()
    assert any("reference model cache" in r.getMessage() for r in caplog.records)
    assert torch.load(cached, weights_only=True)  # retrained and written back as plain tensors


def test_every_load_in_the_package_refuses_pickled_code():
    """No torch.load outside safe_load.py, and every np.load says allow_pickle=False."""
    for path in (PROJECT_ROOT / "saln_exp").rglob("*.py"):
        text = path.read_text()
        if path.name != "safe_load.py":
            assert "torch.load(" not in text, f"{path}: use saln_exp.safe_load"
        for line in text.splitlines():
            if "np.load(" in line:
                assert "allow_pickle=False" in line, f"{path}: {line.strip()}"


def test_numpy_loads_refuse_object_arrays(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([Payload(tmp_path / "pwned")], dtype=object))
    with pytest.raises(ValueError):
        np.load(tmp_path / "objects.npy", allow_pickle=False)
    assert not (tmp_path / "pwned").exists()
