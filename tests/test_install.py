"""The installable product: a wheel that carries its configs, a ``rockgen`` command that works from any directory.

The wheel is built from a copy of the sources (so the checkout stays clean) and installed with ``--no-deps``
into a fresh venv that sees this interpreter's packages through a ``.pth`` file: no network needed. The
checkout is kept off ``sys.path`` (no PYTHONPATH, another working directory), so what runs is the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, TINY

SOURCES = ("pyproject.toml", "README.md", "experiment.py", "templates.py", "rockgen")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[:4]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Build the wheel and install it into a fresh venv; returns its paths."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(
            ROOT / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    wheels = tmp / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(src)], tmp, env, 300)
    (wheel,) = wheels.glob("rockgen-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp, env, 300)
    # This interpreter's packages (torch, lightning, hydra, ...) without their .pth hooks, so an editable
    # rockgen installed here stays invisible to the new venv.
    purelib = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "zz_parent_stack.pth").write_text("\n".join(sorted(here)) + "\n")
    vpy = venv / "bin" / "python"
    _run([str(vpy), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], tmp, env, 300)
    return {"wheel": wheel, "venv": venv, "python": vpy, "rockgen": venv / "bin" / "rockgen", "env": env, "tmp": tmp}


def test_wheel_ships_configs_and_py_typed(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    assert "rockgen/py.typed" in names
    assert "rockgen/configs/run.yaml" in names and "rockgen/configs/task/train.yaml" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "rockgen = rockgen.cli:main" in zipfile.ZipFile(installed["wheel"]).read(entry).decode()


@pytest.mark.slow
def test_installed_command_composes_and_trains_from_another_directory(installed):
    elsewhere = installed["tmp"] / "elsewhere"
    elsewhere.mkdir()
    env = {**installed["env"], "ROCKGEN_LOG_DIR": str(elsewhere / "logs")}
    where = _run([str(installed["python"]), "-c", "import rockgen; print(rockgen.__file__)"], elsewhere, env, 120)
    assert str(installed["venv"]) in where.stdout, f"the wheel's rockgen should be imported, got {where.stdout}"

    job = _run([str(installed["rockgen"]), "--cfg", "job", "template=demo_pixel"], elsewhere, env, 300).stdout
    assert "template_name: demo_pixel" in job and "rockgen.lit.pixel.PixelDiffusion" in job

    run_dir = elsewhere / "run"
    overrides = [o for o in TINY if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=2"]
    out = _run([str(installed["rockgen"]), *overrides, f"hydra.run.dir={run_dir}"], elsewhere, env, 600).stdout
    assert f"Run directory: {run_dir.resolve()}" in out
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    # python -m rockgen is the same command
    mod = _run([str(installed["python"]), "-m", "rockgen", "--cfg", "job"], elsewhere, env, 300).stdout
    assert "template_name: demo" in mod
