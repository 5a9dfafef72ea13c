"""saln-bench: every section runs, writes both files and checks the spec's targets.

(The SALN eigensolver it measures is tested against the paper in test_spectral.py.)
"""

from __future__ import annotations

import json

import pytest

from bench.cli import SECTION_NAMES, main
from bench.epochs import mnist_data_dir
from bench.results import SCHEMA_VERSION


# -- the benchmark command --------------------------------------------------------------------------------
def check_results(out, sections):
    results = json.loads((out / "results.json").read_text())
    markdown = (out / "results.md").read_text()
    assert results["schema"] == SCHEMA_VERSION and results["quick"] is True
    for key in ("cpu", "cores", "torch", "device", "torch_threads"):
        assert results["machine"][key] not in (None, "")
    assert not results["errors"], results["errors"]
    assert {t["status"] for t in results["targets"]} <= {"PASS", "MISS", "n/a"}
    assert any(t["target"].startswith("SALN step") for t in results["targets"])
    assert "## Targets" in markdown and results["machine"]["cpu"] in markdown
    stat_keys = {"median", "q1", "q3", "min", "max", "n"}
    if "saln" in sections:
        rows = results["saln_vs_algorithm1"]
        assert {(r["B"], r["d"], r["features"]) for r in rows} >= {(256, 512, "relu")}
        for r in rows:
            assert set(r["alg1_ms"]) == stat_keys and r["speedup"]["median"] > 0
            assert r["identical"] + r["ambiguous"] <= r["rounds"]
        assert "## 1. SALN" in markdown
    if "selectors" in sections:
        rows = results["selector_overhead"]
        assert {r["selector"] for r in rows} >= {
            "none",
            "saln (pixels)",
            "saln (pretrained, cached)",
            "jest",
            "rho",
        }
        assert all(r["fraction_of_step"] >= 0 and 0 < r["kept_fraction"] <= 1 for r in rows)
        assert "## 2. Selection cost" in markdown
    if "runner" in sections:
        rows = results["runner_vs_plain"]
        assert rows and all(r["images_per_s"]["runner"]["median"] > 0 for r in rows)
        assert all(r["best_plain"].startswith("plain_w") for r in rows)
        assert "## 3. Runner" in markdown
    if "memory" in sections:
        rows = results["peak_memory"]
        assert len(rows) == 2 and all(r["returncode"] == 0 and r["max_rss_mb"] > 50 for r in rows)
        assert "## 4. Peak memory" in markdown
    if "selective" in sections:
        rows = results["selective_backward"]
        assert rows and all(r["cheaper"] for r in rows)
        assert "## 5." in markdown
    if "epochs" in sections:
        rows = results["epoch_times"]
        assert rows and all(r["seconds"]["wall"]["first"] > 0 for r in rows)
        assert all(r["same_numbers"] for r in rows if "same_numbers" in r)
        assert "## 6. Epoch time" in markdown
    if "precision" in sections:
        rows = {r["variant"]: r for r in results["precision"]}
        assert set(rows) == {"fp32", "fp32 + channels_last", "bf16", "bf16 + channels_last"}
        assert all(r["step_ms"]["median"] > 0 and r["speedup_vs_fp32"]["n"] for r in rows.values())
        assert rows["fp32"]["first_loss_rel_diff"] == 0
        # the same computation in another memory layout; bf16 keeps about 3 significant digits
        assert rows["fp32 + channels_last"]["first_loss_rel_diff"] < 1e-4
        assert rows["bf16"]["first_loss_rel_diff"] < 0.05
        assert "## 8. bf16 autocast" in markdown
    if "startup" in sections:
        rows = {r["case"]: r for r in results["startup"]}
        for case in ("misspelt key", "wrong choice", "wrong value"):
            assert rows[case]["exit"] == 2 and rows[case]["stderr_lines"] == 1, rows[case]
            assert not rows[case]["directory_created"]
        assert rows["--help"]["exit"] == 0 and all(r["seconds"]["n"] for r in rows.values())
        assert any(t["target"].startswith("saln-train trainer.epoch=3") for t in results["targets"])
        assert "## 9. Start-up time" in markdown


def test_quick_benchmark_writes_both_files(tmp_path, capsys):
    sections = ("saln", "runner", "selective")
    assert main(["--quick", "--out", str(tmp_path), "--only", ",".join(sections)]) == 0
    check_results(tmp_path, sections)
    assert "| target | required | measured | status |" in capsys.readouterr().out


@pytest.mark.slow
def test_quick_benchmark_runs_every_section(tmp_path):
    # the epoch-time section needs the real MNIST unpacked (`make mnist`; CI does it)
    sections = tuple(s for s in SECTION_NAMES if s != "epochs" or mnist_data_dir() is not None)
    main(["--quick", "--out", str(tmp_path), "--only", ",".join(sections)])
    check_results(tmp_path, sections)


@pytest.mark.slow
def test_quick_benchmark_times_the_start_up(tmp_path):
    assert main(["--quick", "--out", str(tmp_path), "--only", "startup"]) == 0
    check_results(tmp_path, ("startup",))


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        main(["--quick", "--out", str(tmp_path), "--only", "saln,nope"])


def test_only_reruns_some_sections_and_keeps_the_others(tmp_path):
    assert main(["--quick", "--out", str(tmp_path), "--only", "saln"]) == 0
    first = json.loads((tmp_path / "results.json").read_text())
    assert main(["--quick", "--out", str(tmp_path), "--only", "selective"]) == 0
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["saln_vs_algorithm1"] == first["saln_vs_algorithm1"]
    assert merged["selective_backward"] and merged["updated"]["sections"] == ["selective"]
    assert set(merged["sections"]) == {"saln", "selective"}
    assert "re-run on" in (tmp_path / "results.md").read_text()
