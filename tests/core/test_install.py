"""An installed wheel runs from any folder: the configs ship inside the package.

The wheel is built from this checkout and installed into a fresh virtualenv outside it. Offline, the
new environment reuses this one's installed dependencies (torch, hydra, ...) through a path entry, but
not its editable ddlab: `dd` must come from the wheel. From an empty temporary folder it runs a digits
job, dd-eval on its export, and dd-table.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "dd", src / "dd", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(work / "dist"), str(src)], check=True, capture_output=True, text=True)
    wheel = next((work / "dist").glob("ddlab-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # this environment's packages as a plain path entry: its .pth files (the editable ddlab) are not read
    Path(site, "reuse_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    return venv, wheel


def run(venv: Path, prog: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "DD_CACHE": str(cwd / "cache"), "PYTHONPATH": ""}
    return subprocess.run([str(venv / "bin" / prog), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_wheel_carries_the_config_tree(wheel_env):
    import zipfile

    _, wheel = wheel_env
    names = zipfile.ZipFile(wheel).namelist()
    assert "dd/conf/config.yaml" in names and "dd/conf/kind/text.yaml" in names
    assert "dd/conf/method/random.yaml" in names and any(n.startswith("dd/conf/experiment/") for n in names)


def test_an_installed_wheel_runs_distill_eval_and_table_from_another_folder(wheel_env, tmp_path):
    venv, _ = wheel_env
    where = run(venv, "python", "-c", "import dd; print(dd.__file__)", cwd=tmp_path)
    assert str(venv) in where.stdout and str(ROOT) not in where.stdout, where.stdout  # dd comes from the wheel

    r = run(venv, "dd-distill", "method=random", "dataset=digits", "ipc=1", "eval.num_models=2", "eval.epochs=2",
            "progress=false", "hydra.run.dir=run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["kind"] == "image" and res["method"] == "random" and len(res["metric"]["per_run"]) == 2
    assert "random digits ipc=1: test accuracy" in r.stdout

    r = run(venv, "dd-eval", f"path={tmp_path / 'run' / 'distilled'}", "model=mlp", "eval.num_models=1",
            "eval.epochs=2", "progress=false", "hydra.run.dir=eval", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["model"] == "mlp"

    r = run(venv, "dd-table", "run", cwd=tmp_path)
    assert r.returncode == 0 and "random" in r.stdout and "digits" in r.stdout, r.stdout + r.stderr
