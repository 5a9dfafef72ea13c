"""saln-bench: every section runs, writes both files and checks the spec's targets.

(The SALN eigensolver it measures is tested against the paper in test_spectral.py.)
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from bench import targets
from bench.cli import SECTION_NAMES, main, run
from bench.epochs import mnist_data_dir
from bench.results import SCHEMA_VERSION
from bench.settings import GPU_SECTIONS, gpu_settings
from conftest import BIN


# -- the benchmark command --------------------------------------------------------------------------------
def check_results(out, sections):
    results = json.loads((out / "results.json").read_text())
    markdown = (out / "results.md").read_text()
    assert results["schema"] == SCHEMA_VERSION and results["quick"] is True
    for key in ("cpu", "cores", "torch", "device", "torch_threads"):
        assert results["machine"][key] not in (None, "")
    assert not results["errors"], results["errors"]
    assert {t["status"] for t in results["targets"]} <= {"PASS", "MISS", "n/a"}
    check_targets(results)
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
        loss_based = [r for r in rows if r.get("loss_based")]
        assert {r["selector"] for r in loss_based} >= {"topk_loss", "jest", "rho", "accuracy"}
        assert all(r["forwards"] == 1 and r["select_vs_forward"] > 0 for r in loss_based)
        assert "## 2. Selection cost" in markdown
    if "runner" in sections:
        rows = results["runner_vs_plain"]
        assert rows and all(r["images_per_s"]["runner"]["median"] > 0 for r in rows)
        assert all(r["images_per_s"]["bare"]["median"] > 0 for r in rows)
        assert all(r["speedup_vs_bare"]["n"] and r["eval_vs_bare"]["n"] for r in rows)
        assert all(r["eval_images_per_s"]["bare"]["median"] > 0 for r in rows)
        assert all(r["best_plain"].startswith("plain_w") for r in rows)
        assert "## 3. Runner" in markdown and "bare img/s" in markdown
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
        bare = [r["seconds_bare"] for r in rows if "seconds_bare" in r]
        assert bare and all(b["train"] > 0 and b["eval"] > 0 for b in bare)
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


def check_targets(results):
    """The targets table holds the spec's thresholds, from bench/targets.py, and no other."""
    rows = {t["target"]: t for t in results["targets"]}
    for n, need in targets.SALN_SPEEDUP.items():
        assert rows[f"SALN step vs Algorithm 1, B={n}, d=512"]["required"] == f">= {need:g}x"
    assert targets.SALN_SPEEDUP == {1024: 20.0, 256: 3.0}  # shared SPEC section 8
    assert targets.RUNNER_VS_BARE == targets.EVAL_VS_BARE == 0.95
    assert targets.FCNET100_RECIPE_MINUTES == 5.0 and targets.GPU_RUNNER_VS_PLAIN == 3.0
    for row in results.get("runner_vs_plain", []):
        assert rows[f"runner selector=none vs bare loop, {row['case']}"]["required"] == ">= 0.95x"
        assert rows[f"evaluation vs bare inference loop, {row['case']}"]["required"] == ">= 0.95x"
    lenet = [t for name, t in rows.items() if name.startswith("LeNet row")]
    assert all(t["status"] == "n/a" and "30 min" not in t["required"] for t in lenet)


def test_targets_are_the_specs_and_pass_or_miss_against_them():
    """Made-up results on either side of each threshold: PASS above, MISS below."""

    def ratio(median):
        return {"median": median, "n": 1}

    def results(scale):
        saln = [
            {"B": n, "d": 512, "features": "relu", "speedup": ratio(need * scale),
             "identical": 7, "non_degenerate": 7}
            for n, need in targets.SALN_SPEEDUP.items()
        ]  # fmt: skip
        runner = [
            {"case": "LeNet", "speedup_vs_bare": ratio(0.95 * scale),
             "eval_vs_bare": ratio(0.95 * scale), "speedup_vs_best_plain": ratio(3.0 * scale)}
        ]  # fmt: skip
        return {"saln_vs_algorithm1": saln, "runner_vs_plain": runner,
                "machine": {"device": "cuda"}}  # fmt: skip

    above = {t["target"]: t["status"] for t in targets.evaluate_targets(results(1.01))}
    below = {t["target"]: t["status"] for t in targets.evaluate_targets(results(0.99))}
    measured = [name for name, status in above.items() if status != "n/a"]
    assert len(measured) == 6  # 2 SALN speeds, kept sets, training, evaluation, GPU vs plain
    assert all(above[name] == "PASS" for name in measured)
    assert all(below[name] == "MISS" for name in measured if "kept set" not in name)


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


def test_bench_gpu_without_cuda_is_one_line_and_exit_2(tmp_path):
    """`make bench-gpu` (saln-bench --gpu) on a machine without CUDA: one clear line, no traceback,
    no files."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run(
        [str(BIN / "saln-bench"), "--gpu", "--out", str(tmp_path / "gpu")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "make bench-gpu" in lines[0]
    assert not (tmp_path / "gpu").exists()


def test_the_gpu_plan_runs_on_a_cpu_at_the_smoke_size(tmp_path):
    """The same sections and code `make bench-gpu` runs, at the quick size on this CPU."""
    sections = tuple(s for s in GPU_SECTIONS if s != "epochs" or mnist_data_dir() is not None)
    results = run(
        gpu_settings(quick=True), tmp_path, True, sections, log=lambda _: None,
        device=torch.device("cpu"), plan="gpu",
    )  # fmt: skip
    check_results(tmp_path, sections)
    assert results["plan"] == "gpu" and "gpu plan" in (tmp_path / "results.md").read_text()
    assert [r["other_solver"] for r in results["saln_vs_algorithm1"]] == ["eigh"] * len(
        results["saln_vs_algorithm1"]
    )  # on a CPU the solver not picked is the dense one


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        main(["--quick", "--out", str(tmp_path), "--only", "saln,nope"])


def test_only_reruns_some_sections_and_keeps_the_others(tmp_path):
    assert main(["--quick", "--out", str(tmp_path), "--only", "saln"]) == 0
    first = json.loads((tmp_path / "results.json").read_text())
    assert main(["--quick", "--out", str(tmp_path), "--only", "selective"]) == 0
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["saln_vs_algorithm1"] == first["saln_vs_algorithm1"]
    assert merged["selective_backward"] and merged["updates"][-1]["sections"] == ["selective"]
    assert set(merged["sections"]) == {"saln", "selective"}
    assert "re-run on" in (tmp_path / "results.md").read_text()


def test_each_only_run_keeps_saying_which_sections_it_measured(tmp_path):
    """Two `--only` runs after a first one: the header names both, each with its own sections,
    and a section re-run again moves to the newer line."""
    quick = ["--quick", "--out", str(tmp_path), "--only"]
    assert main([*quick, "saln,selective"]) == 0
    assert main([*quick, "selective"]) == 0
    assert main([*quick, "saln"]) == 0
    merged = json.loads((tmp_path / "results.json").read_text())
    assert [u["sections"] for u in merged["updates"]] == [["selective"], ["saln"]]
    header = (tmp_path / "results.md").read_text().split("## Targets")[0]
    assert "Sections selective re-run on" in header and "Sections saln re-run on" in header
    assert main([*quick, "selective"]) == 0
    merged = json.loads((tmp_path / "results.json").read_text())
    assert [u["sections"] for u in merged["updates"]] == [["saln"], ["selective"]]
