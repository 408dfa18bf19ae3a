"""trainer.precision=auto: bf16-mixed on native-bf16 hardware, 32-true elsewhere; explicit bf16 warnings."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from rockgen import precision as prec


def test_cpu_flags_parsed(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert prec.cpu_flags(info) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert prec.cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize(
    ("flags", "capability", "native"),
    [
        ({"avx2", "avx512_bf16"}, "AVX512", True),
        ({"amx_bf16", "amx_tile"}, "AVX512", True),
        ({"avx2", "fma"}, "AVX2", False),
        ({"avx512f"}, "AVX512", False),
        (set(), "AVX512_BF16", True),  # no /proc/cpuinfo: torch's capability decides
    ],
)
def test_cpu_detection(monkeypatch, flags, capability, native):
    monkeypatch.setattr(prec, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    ok, why = prec.native_bf16("cpu")
    assert ok is native and why


def test_cuda_detection(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake A100")
    seen = {}

    def supported(including_emulation=True):
        seen["emulation"] = including_emulation
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert prec.native_bf16("gpu") == (True, "Fake A100 has bf16 units")
    assert seen["emulation"] is False  # emulated bf16 (pre-Ampere) must not count
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert prec.native_bf16("gpu")[0] is False


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_chooses_by_hardware_and_logs_why(monkeypatch, caplog, native, expected):
    monkeypatch.setattr(prec, "native_bf16", lambda acc: (native, f"reason for {acc}"))
    with caplog.at_level(logging.INFO, logger="rockgen.precision"):
        assert prec.resolve_precision("auto", "cpu") == expected
    lines = [r.getMessage() for r in caplog.records if r.name == "rockgen.precision"]
    assert lines == [f"trainer.precision=auto -> {expected}: reason for cpu"]
    assert prec.resolve_precision(None, "cpu") == expected  # unset = auto
    assert prec.resolve_precision("auto", "cpu", training=False) == "32-true"  # inference stays full precision


def test_explicit_bf16_on_emulating_hardware_warns_with_cost(monkeypatch):
    monkeypatch.setattr(prec, "native_bf16", lambda acc: (False, "the CPU has neither avx512_bf16 nor amx_bf16"))
    monkeypatch.setattr(prec, "bf16_cost", lambda device="cpu", n=256: 37.5)
    with pytest.warns(UserWarning, match=r"bf16-mixed, but the CPU has neither.*37\.5x the time of fp32"):
        assert prec.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    monkeypatch.setattr(prec, "native_bf16", lambda acc: (True, "native"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prec.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
        assert prec.resolve_precision("32-true", "cpu") == "32-true"


def test_fp16_on_cpu_refused():
    with pytest.raises(ValueError, match="16-mixed .* needs a GPU"):
        prec.resolve_precision("16-mixed", "cpu")


def test_bf16_cost_is_a_time_ratio():
    cost = prec.bf16_cost("cpu", n=64)
    assert 0 < cost < 1e4


def test_default_trainer_config_is_auto():
    from pathlib import Path

    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[1]
    found = [p for p in root.glob("**/configs/trainer/default.yaml") if ".git" not in p.parts]
    assert found, "no configs/trainer/default.yaml"
    assert OmegaConf.load(found[0]).precision == "auto"


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_build_trainer_resolves_the_default_auto(monkeypatch, tmp_path, native, expected):
    from conftest import TINY, compose_config

    from rockgen.tasks.build import build_trainer

    monkeypatch.setattr(prec, "native_bf16", lambda acc: (native, "test"))
    cfg = compose_config([o for o in TINY if not o.startswith("trainer.precision")], tmp_path)
    assert cfg.trainer.precision == "auto"
    assert build_trainer(cfg, tmp_path).precision == expected
