"""scripts/bench.py end to end on the tiny demo preset: one timed iteration per measurement, table and JSON."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

ROW_FIELDS = (
    "config",
    "precision",
    "channels_last",
    "compile",
    "malloc_tunables",
    "omp_passive",
    "params_m",
    "rss_after_build_gb",
    "peak_rss_gb",
    "peak_rss_total_gb",
    "train_img_s",
    "render_img_s",
    "invert_img_s",
    "encode_img_s",
    "calib_conv_ms",
    "other_load",
    "wall_s",
    "measured",
)


def run_script(name: str, flags: str, cwd, out=None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python scripts/<name> <flags> [--out <out>]`` in ``cwd``, output captured."""
    cmd = [sys.executable, str(ROOT / "scripts" / name), *flags.split(), *(["--out", str(out)] if out else [])]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_bench_demo_writes_every_row_and_field(tmp_path):
    out = tmp_path / "bench.json"
    # One thread: on a busy shared machine two OpenMP threads can stall each other on every small op.
    flags = "--preset demo --batch 2 --iters 1 --T 2 --threads 1 --precision fp32,bf16"
    proc = run_script("bench.py", flags, tmp_path, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train step: 1/1" in proc.stderr  # per-iteration progress reaches the user

    result = json.loads(out.read_text())
    assert result["preset"] == "demo" and result["batch"] == 2 and result["T"] == 2
    for key in ("torch", "threads", "cpu_model"):
        assert result["machine"][key], key
    assert [r["config"] for r in result["rows"]] == ["fp32 cl", "bf16 cl"]
    for row in result["rows"]:
        for field in ROW_FIELDS:
            assert field in row, (row["config"], field)
        for col in result["columns"]:
            assert isinstance(row[col], float) and row[col] > 0, (row["config"], col)
        for what in ("train", "render", "invert", "encode"):
            measured = row["measured"][what]
            assert len(measured["times_s"]) == 1  # the warm-up call is not reported
            assert {"page_faults", "other_load", "calib_conv_ms"} <= set(measured)
        # training peak RSS is read before inference, so it can only be lower than the whole run's
        assert row["rss_after_build_gb"] <= row["peak_rss_gb"] <= row["peak_rss_total_gb"]
    for header in ("train img/s", "render img/s", "invert img/s", "encode img/s", "peak RSS GB"):
        assert header in proc.stdout


def test_bench_latent_rows_and_json(tmp_path):
    out = tmp_path / "latent.json"
    flags = "--nets demo --codes 32 --chunks 8,32 --T 3 --train-batch 16 --iters 1 --threads 1 --precision fp32"
    proc = run_script("bench_latent.py", flags, tmp_path, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["what"], r["batch"], r["mode"]) for r in rows] == [
        ("sample", 8, "shared t"),
        ("sample", 32, "shared t"),
        ("sample", 32, "per-row t"),
        ("train", 16, ""),
    ]
    for r in rows:
        assert len(r["times_s"]) == 1 and r["codes_s"] > 0
    assert rows[0]["extrapolated"] and not rows[1]["extrapolated"]
    assert "codes/s" in proc.stdout and "targets (issue #3)" in proc.stdout


def test_bench_latent_rejects_unknown_net(tmp_path):
    proc = run_script("bench_latent.py", "--nets huge", tmp_path, timeout=60)
    assert proc.returncode == 2 and "unknown net 'huge'" in proc.stderr


OFFICIAL = Path(os.environ.get("ROCKGEN_OFFICIAL_DIFFAE", "/work/official/diffae"))
needs_official = pytest.mark.skipif(
    not (OFFICIAL / "model" / "unet_autoenc.py").is_file(), reason=f"no official DiffAE checkout at {OFFICIAL}"
)


@needs_official
@pytest.mark.slow
def test_bench_official_side_by_side(tmp_path):
    """--official --quick: both networks at the tiny config (same parameter count), ratios, memory, JSON; with
    --inference none,freeze a second row whose rockgen side renders through the frozen decoder."""
    out = tmp_path / "official.json"
    flags = f"--official {OFFICIAL} --quick --precision fp32 --threads 1 --inference none,freeze"
    proc = run_script("bench.py", flags, tmp_path, out, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row, frozen = json.loads(out.read_text())["rows"]
    assert row["trace_s"] is None and frozen["rockgen_options"]["inference_compile"] == "freeze"
    assert frozen["trace_s"] > 0 and frozen["traces"] >= 1 and "memory" not in frozen
    assert row["config"] == "tiny" and row["precision"] == "fp32"
    for what in ("train", "render", "invert"):
        for side in ("official", "rockgen"):
            assert len(row["times_s"][side][what]) == 1 and row["times_s"][side][what][0] > 0
        expect = row["median_s"]["official"][what] / row["median_s"]["rockgen"][what]
        assert row["ratio"][what] == pytest.approx(expect, abs=1e-3)
        cpu = row["median_cpu_s"]["official"][what] / row["median_cpu_s"]["rockgen"][what]
        assert row["ratio_cpu"][what] == pytest.approx(cpu, abs=1e-3) and len(row["cpu_times_s"]["rockgen"][what]) == 1
    mem = row["memory"]
    assert mem["official"]["train_rss_gb"] > 0 and mem["rockgen"]["train_rss_gb"] > 0
    assert "train x" in proc.stdout and "OFFICIAL_ROCK64" not in (ROOT / "scripts" / "bench.py").read_text()


@needs_official
def test_official_imports_leave_rockgen_modules_alone():
    """The official top-level modules (templates, experiment, ...) are imported aside and rockgen's restored."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_official
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    import templates

    with bench_official.official_imports(OFFICIAL):
        official_templates = importlib.import_module("templates")
        assert hasattr(official_templates, "ffhq64_autoenc")
    assert sys.modules["templates"] is templates and hasattr(templates, "presets")
    assert "model.unet_autoenc" not in sys.modules


def test_bench_official_rejects_missing_folder(tmp_path):
    proc = run_script("bench.py", f"--official {tmp_path / 'nope'} --quick", tmp_path, timeout=120)
    assert proc.returncode != 0 and "no such folder" in proc.stderr
