"""Files someone else may have written (a shared run, sweep or cache directory) are read without
running code: a crafted pickle that would create a file must not create it, anywhere we load."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
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


# ---------------------------------------------------------------- the report on shared folders


def small_runs(make_cfg, folder, *variants: tuple[str, ...]) -> list:
    """One completed run per variant (a tuple of overrides) as a sweep leaves them in `folder`."""
    dirs = []
    for number, overrides in enumerate(variants):
        cfg = make_cfg(*SMALL, "trainer.epochs=1", *overrides)
        cfg.paths.output_dir = str(folder / str(number))
        run(cfg)
        dirs.append(folder / str(number))
    return dirs


def test_the_report_skips_crafted_run_files_with_one_warning_each(make_cfg, tmp_path, caplog):
    """Object arrays in final_layer.npz / forgetting.npz and a `!!python` tag in config.yaml: no
    code runs, each file is skipped with one warning naming it, and the rest is reported."""
    from saln_exp.report import cli

    marker = tmp_path / "pwned"
    uniform = ("selector=uniform", "selector.filter_ratio=0.5")
    none, kept, unfinished = small_runs(make_cfg, tmp_path / "sweep", (), uniform, ("seed=1",))
    payload = np.array([Payload(marker)], dtype=object)
    np.savez(none / "final_layer.npz", weight=payload)  # what the loader would unpickle
    np.savez(kept / "forgetting.npz", events=payload, learned=payload, presented=payload)
    (unfinished / "summary.json").unlink()  # identity from config.yaml, then
    (unfinished / "config.yaml").write_text(
        f"seed: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    out = tmp_path / "report"
    assert cli.main([str(tmp_path / "sweep"), "--out", str(out), "--table", "noise"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for path in (none / "final_layer.npz", kept / "forgetting.npz", unfinished / "config.yaml"):
        assert sum(m.startswith(f"{path} skipped: ") for m in warnings) == 1, warnings
    assert len(pd.read_csv(out / "runs.csv")) == 3
    drawn = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert any("final_layer" in name for name in drawn)  # uniform's
    assert any(name.startswith("forgetting_none") for name in drawn), drawn
    assert not any(name.startswith("forgetting_uniform") for name in drawn), drawn
    assert not marker.exists()


def test_the_report_counts_only_saln_exp_runs_and_writes_only_where_asked(
    make_cfg, tmp_path, capsys
):
    from saln_exp import rundir
    from saln_exp.report import cli

    ours, older = small_runs(make_cfg, tmp_path / "parent" / "sweep", (), ("seed=1",))
    other = tmp_path / "parent" / "other_tool"  # another tool's files of the same names
    other.mkdir()
    (other / "status.json").write_text('{"status": "completed"}')
    (other / "metrics.jsonl").write_text('{"epoch": 1, "loss": 0.5}\n')
    (other / "config.yaml").write_text("lr: 0.1\n")
    # a run written before status.json said who wrote it: known by its saln-exp config
    status = rundir.read_json(older / "status.json")
    status.pop("written_by", None)
    (older / "status.json").write_text(json.dumps(status))

    assert cli.main([str(tmp_path / "parent"), "--no-figures"]) == 2  # not a sweep: no --out
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {tmp_path / 'parent'} is not a sweep or run directory of saln-exp, so the report "
        "is not written into it; give --out <dir>"
    )
    assert not (tmp_path / "parent" / "report").exists()

    out = tmp_path / "report"
    assert cli.main([str(tmp_path / "parent"), "--out", str(out), "--no-figures"]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["run_dir"]) == [str(ours), str(older)]  # not other_tool
    assert cli.main([str(ours.parent), "--no-figures"]) == 0  # a folder of runs: its report/
    assert (ours.parent / "report" / "runs.csv").exists()


def test_a_selection_example_of_plain_tensors_but_the_wrong_contents_is_skipped(tmp_path, caplog):
    torch.save({"images": torch.zeros(2, 3), "selector": "x"}, tmp_path / "selection_example.pt")
    assert load_example(tmp_path) is None
    assert "is not a selection example" in caplog.text
