"""dd-distill / dd-table as a user runs them: real subprocesses, tiny settings on digits.

Every invocation is independent, so a module fixture starts the real processes at once on a small
thread pool and the tests read the outcomes; the suite then costs about the longest few
runs instead of their sum. The refusals end before any work: one is a real process (nothing printed
at start or exit may break its one line), the others run in this process (conftest.run_cli), as does
method=full. The end-to-end run logs to wandb offline as well.
"""

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import cli_env, entry_points, run_cli

import dd.export

TINY = ["dataset=digits", "model.width=8", "eval.epochs=2", "eval.num_models=2"]


BAD = {  # name -> (overrides, text the one-line error must contain)
    "dataset_foo": (["dataset=foo"], "foo"),
    "method_bar": (["method=bar"], "bar"),
    "model_nope": (["model=nope"], "nope"),
    "ipc_0": (["ipc=0"], "ipc=0"),
    "ipc_neg": (["ipc=-3"], "ipc=-3"),
    "ipc_too_big": (["ipc=500"], "ipc=500"),
    "lr_neg": (["eval.lr=-0.1"], "-0.1"),
    "device_tpu": (["device=tpu"], "tpu"),
    "device_cuda7": (["device=cuda:7"], "device=cuda:7 was asked for but"),  # no GPU here, or fewer than 8
    "mnist_missing": (["dataset=mnist", "dataset.root={tmp}/nonexistent"], "{tmp}/nonexistent"),
}
REAL = "lr_neg"  # the refusal run as a real process: it goes through Hydra and into the run before refusing


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    jobs = {
        "multirun": ["-m", "method=random,herding", "ipc=1", *TINY, "method.feature_epochs=1",
                     "progress=false", f"hydra.sweep.dir={tmp}/sweep"],
        "e2e": ["method=random", "ipc=1", *TINY, "logger=wandb", f"hydra.run.dir={tmp}/e2e/run"],
    }
    env = {"e2e": {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp / "e2e")}}
    here = {"full": ["method=full", "dataset=digits", "eval.epochs=1", "eval.num_models=1", "model.width=8",
                     f"hydra.run.dir={tmp}/full/run"]}
    bad = {}
    for name, (overrides, _) in BAD.items():
        # dataset=... comes after TINY so it wins; the bad runs keep progress bars on (stderr must still be one line)
        bad[name] = ["method=random", "ipc=1", *TINY, *[o.format(tmp=tmp) for o in overrides],
                     f"hydra.run.dir={tmp}/{name}/run"]
    jobs[REAL] = bad.pop(REAL)
    workers = max(2, min(4, os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # the long runs were added first
        futures = {name: pool.submit(run_cli, "dd-distill", *args, env=env.get(name)) for name, args in jobs.items()}
        procs = {name: run_cli("dd-distill", *args, in_process=True) for name, args in {**here, **bad}.items()}
        return tmp, {**procs, **{name: f.result() for name, f in futures.items()}}


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"


# --- end to end -------------------------------------------------------------------------


def test_end_to_end_random(runs, digits_data):
    tmp, procs = runs
    proc = procs["e2e"]
    _ok(proc)
    run_dir = tmp / "e2e" / "run"
    res = json.loads((run_dir / "results.json").read_text())
    for key in ("kind", "metric", "method", "dataset", "ipc", "model", "seed", "timings", "device", "precision",
                "selection", "config"):
        assert key in res, key
    acc = res["metric"]
    assert res["kind"] == "image" and acc["name"] == "accuracy" and acc["higher_is_better"]
    assert len(acc["per_run"]) == 2
    assert acc["mean"] == pytest.approx(sum(acc["per_run"]) / 2)
    assert acc["std"] == pytest.approx(abs(acc["per_run"][0] - acc["per_run"][1]) / 2)
    assert (res["method"], res["dataset"], res["ipc"], res["model"], res["seed"]) == ("random", "digits", 1, "convnet", 0)
    assert res["config"]["model"]["width"] == 8 and res["config"]["eval"]["epochs"] == 2
    assert all(v >= 0 for v in res["timings"].values()) and "total_s" in res["timings"]

    # the accuracy line on stdout agrees with results.json
    m = re.search(r"random digits ipc=1: test accuracy (\d+\.\d\d) ± (\d+\.\d\d)% over 2 convnet models -> (.+)",
                  proc.stdout)
    assert m, proc.stdout
    assert float(m.group(1)) == pytest.approx(100 * acc["mean"], abs=0.006)
    assert float(m.group(2)) == pytest.approx(100 * acc["std"], abs=0.006)
    assert Path(m.group(3).strip()) == run_dir

    # the exported set: one real training image per class
    ds = dd.export.load(run_dir / "distilled")
    assert ds.images.shape == (10, 1, 16, 16)
    assert sorted(ds.labels.tolist()) == list(range(10))
    idx = torch.tensor(ds.meta["train_indices"])
    assert len(idx) == 10 and len(set(idx.tolist())) == 10
    assert torch.equal(ds.images, digits_data.train_x[idx])
    assert torch.equal(ds.labels, digits_data.train_y[idx])
    assert ds.meta["method"] == "random" and ds.meta["ipc"] == 1 and ds.meta["evaluation"]["per_model"] == acc["per_run"]

    from PIL import Image

    with Image.open(run_dir / "grid.png") as im:
        im.verify()
        assert im.format == "PNG"
    with Image.open(run_dir / "grid.png") as im:
        assert im.size[0] > 50 and im.size[1] > 50
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name != ".hydra"]
    assert leftovers == []  # no temp files from the atomic writes


def test_wandb_offline_logging(runs):
    tmp, procs = runs
    _ok(procs["e2e"])
    logs = list((tmp / "e2e" / "run" / "wandb").glob("offline-run-*"))
    assert len(logs) == 1
    assert list(logs[0].glob("*.wandb"))  # the offline run's log file


def test_full_writes_results_but_no_export(runs):
    tmp, procs = runs
    _ok(procs["full"])
    run_dir = tmp / "full" / "run"
    res = json.loads((run_dir / "results.json").read_text())
    assert res["method"] == "full" and len(res["metric"]["per_run"]) == 1
    assert not (run_dir / "distilled").exists() and not (run_dir / "grid.png").exists()


def test_multirun_and_table(runs):
    tmp, procs = runs
    _ok(procs["multirun"])
    sweep = tmp / "sweep"
    files = sorted(sweep.glob("*/results.json"))
    assert len(files) == 2
    by_method = {}
    for f in files:
        r = json.loads(f.read_text())
        assert r["method"] in f.parent.name and r["ipc"] == 1
        assert (f.parent / "distilled" / "meta.json").is_file()
        by_method[r["method"]] = r
    assert set(by_method) == {"random", "herding"}

    table = run_cli("dd-table", sweep, timeout=120)
    _ok(table)
    lines = table.stdout.strip().splitlines()
    assert lines[0].replace(" ", "") == "|method|digitsipc1|"
    rows = {ln.strip("| ").split("|")[0].strip(): ln.split("|")[2].strip() for ln in lines[2:]}
    assert set(rows) == {"random", "herding"}
    for method, r in by_method.items():
        acc = r["metric"]["per_run"]
        mean = 100 * sum(acc) / len(acc)
        std = 100 * abs(acc[0] - acc[1]) / 2
        assert rows[method] == f"{mean:.1f} ± {std:.1f} (n=1)"


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_exits_2_with_one_line(runs, name):
    tmp, procs = runs
    proc = procs[name]
    expected = BAD[name][1].format(tmp=tmp)
    assert proc.returncode == 2, f"exit {proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("dd-distill: error: ") and expected in err, err
    assert "Traceback" not in proc.stdout + proc.stderr
    run_dir = tmp / name / "run"
    assert not (run_dir / "results.json").exists()
    assert not (run_dir / "distilled").exists()
    assert not (run_dir / "grid.png").exists()


STARTS = """
import importlib, sys
for prog, target in {targets!r}.items():
    module, fn = target.split(":")
    sys.argv = [prog, "--version"]
    try:
        getattr(importlib.import_module(module), fn)()
    except SystemExit as e:
        assert e.code in (0, None), (prog, e.code)
"""


def test_every_command_starts_in_a_fresh_process_without_a_word_on_stderr():
    """What only a fresh process shows, for every dd-* command at once (the refusals of each command run in
    process, conftest.run_cli): importing it and starting it print nothing on stderr (a warning at import would
    break the one-line refusals)."""
    from importlib.metadata import version

    targets = entry_points()
    r = subprocess.run([sys.executable, "-c", STARTS.format(targets=targets)], capture_output=True, text=True,
                       env=cli_env(), timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr[-3000:]
    assert r.stdout.splitlines() == [f"{prog} (ddlab {version('ddlab')})" for prog in targets]


def test_an_unusable_device_is_refused_before_the_run_folder_exists(runs):
    tmp, procs = runs
    assert "available: cpu" in procs["device_cuda7"].stderr
    assert not (tmp / "device_cuda7").exists() and not (tmp / "device_tpu").exists()


def test_unknown_choice_lists_allowed(runs):
    _, procs = runs
    err = procs["dataset_foo"].stderr
    for name in ("digits", "mnist", "cifar10"):
        assert name in err
    assert "random" in procs["method_bar"].stderr and "convnet" in procs["model_nope"].stderr
