"""ddlab through a real SLURM controller: a one-node cluster on this machine (tests/slurm/cluster.sh).

`make slurm-check` runs these (they are `slow`: `make test` leaves them out, and needs no SLURM). Each
step writes what it saw (commands, job ids, the comparison) to benchmarks/results/slurm_check.json:
1. dd-buffer sharded over 2 SLURM jobs into one folder: the experts of the local launcher;
2. dd-distill over a 2x2 grid as 4 SLURM jobs, then dd-table: the local launcher's numbers;
3. one SLURM job of 2 tasks (submitit tasks_per_node=2): 2 ranks through SLURM's variables (dd.dist);
4. preemption: a distillation job requeued mid-run (`scontrol requeue`), and one sent the pre-timeout
   signal (USR2, submitit's checkpoint-and-requeue): each resumes from its checkpoint and ends with the
   images of an uninterrupted run, bit for bit.
The quick test at the end needs no cluster: the one-line refusal when there is no SLURM.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dd.cli.common import check_choices
from dd.errors import DDError

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
BIN = Path(sys.executable).parent
REPORT = ROOT / "benchmarks" / "results" / "slurm_check.json"
# a CPU node of 2 cores: one core and 2 GB a task, no GPU
SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=2", "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=30"]
QUIET = ["progress=false", "logger=none"]
MTT = ["dataset=digits", "ipc=1", "model.width=6", "eval.epochs=3", "eval.num_models=2", "method=mtt",
       "buffer.num_experts=2", "buffer.epochs=3", "method.max_start_epoch=2", "method.expert_epochs=1",
       "method.syn_steps=3", "method.batch_syn=5", "method.iterations=6", "method.eval_every=3",
       "method.checkpoint_every=3", "method.lr_img=100", *QUIET]
report: dict = {}


def run(cmd: list[str], timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", DD_DEVICE="cpu")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=kw.get("cwd"))
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr[-4000:]}"
    return done


def dd(command: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return run([str(BIN / command), *args], **kw)


def record(step: str, **values) -> None:
    report[step] = values
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=1, default=str) + "\n")


def job_dir(sweep: Path) -> Path:
    """The run folder of a sweep's only job (the sweep names it 0_<method>_<dataset>_...), once it exists."""
    found = sorted(p for p in sweep.glob("0_*") if p.is_dir())
    return found[0] if found else sweep / "0_"


def job_ids(sweep: Path) -> list[str]:
    """The SLURM job ids submitit used for a sweep (its .submitit/<job id> folders)."""
    return sorted(p.name for p in (sweep / ".submitit").iterdir() if p.name[0].isdigit())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        pytest.fail(f"the SLURM cluster did not start:\n{started.stderr[-4000:]}")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    sinfo = subprocess.run(["sinfo"], capture_output=True, text=True).stdout
    record("cluster", state=str(state), sinfo=sinfo, version=subprocess.run(["sinfo", "--version"], capture_output=True,
                                                                           text=True).stdout.strip())
    yield state
    subprocess.run(["bash", str(CLUSTER), "stop", str(state)], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_buffer_shards_through_slurm_equal_the_local_launcher(cluster, tmp_path):
    common = ["dataset=digits", "model.width=6", "buffer.num_experts=4", "buffer.epochs=2", "buffer.start=0,2",
              "buffer.count=2", "progress=false"]
    dd("dd-buffer", "-m", *SLURM, *common, f"buffer.dir={tmp_path / 'slurm'}", f"hydra.sweep.dir={tmp_path / 'sw1'}")
    dd("dd-buffer", "-m", *common, f"buffer.dir={tmp_path / 'local'}", f"hydra.sweep.dir={tmp_path / 'sw2'}")
    for e in range(4):
        a = load_file(str(tmp_path / "slurm" / f"expert_{e:04d}.safetensors"))["trajectory"]
        b = load_file(str(tmp_path / "local" / f"expert_{e:04d}.safetensors"))["trajectory"]
        assert torch.equal(a, b), e
    record("buffer", jobs=job_ids(tmp_path / "sw1"), experts=4, equal_to_local=True)


@pytest.mark.slow
def test_a_grid_through_slurm_gives_the_local_table(cluster, tmp_path):
    grid = ["method=random,herding", "ipc=1,2", "dataset=digits", "model.width=8", "eval.epochs=5",
            "eval.num_models=2", *QUIET]
    dd("dd-distill", "-m", *SLURM, *grid, f"hydra.sweep.dir={tmp_path / 'slurm'}")
    dd("dd-distill", "-m", *grid, f"hydra.sweep.dir={tmp_path / 'local'}")

    def cells(sweep: Path) -> dict:
        out = {}
        for f in sweep.glob("*/results.json"):
            r = json.loads(f.read_text())
            out[(r["method"], r["ipc"])] = r["metric"]["per_run"]
        return out

    slurm, local = cells(tmp_path / "slurm"), cells(tmp_path / "local")
    assert len(slurm) == 4 and slurm == local
    table = dd("dd-table", str(tmp_path / "slurm")).stdout
    assert "herding" in table and "random" in table
    record("grid", jobs=job_ids(tmp_path / "slurm"), cells=len(slurm), equal_to_local=True, table=table)


@pytest.mark.slow
def test_one_slurm_job_of_two_tasks_is_a_two_rank_job(cluster, tmp_path):
    dd("dd-distill", "-m", *SLURM, "hydra.launcher.tasks_per_node=2", *MTT, f"buffer.dir={tmp_path / 'b1'}",
       f"hydra.sweep.dir={tmp_path / 'slurm'}")
    dd("dd-distill", *MTT, f"buffer.dir={tmp_path / 'b2'}", f"hydra.run.dir={tmp_path / 'one'}")
    ranked = json.loads((job_dir(tmp_path / "slurm") / "results.json").read_text())
    assert ranked["device"]["world_size"] == 2
    a = load_file(str(job_dir(tmp_path / "slurm") / "distilled" / "data.safetensors"))["images"]
    b = load_file(str(tmp_path / "one" / "distilled" / "data.safetensors"))["images"]
    err = float((a - b).norm() / b.norm())
    assert err < 1e-5
    ranks = sorted(json.loads(p.read_text())["rank"] for p in (tmp_path / "b1").glob("expert_*.json"))
    assert ranks == [0, 1]
    record("two_tasks", jobs=job_ids(tmp_path / "slurm"), world_size=2, images_rel_err_vs_one_process=err,
           experts_by_rank=ranks)


LONG = [*MTT, "method.iterations=400", "method.syn_steps=20", "method.checkpoint_every=10", "method.eval_every=0"]


def wait_for_checkpoint(sweep: Path, timeout: float = 300) -> Path:
    """The job's checkpoint, once it has been written."""
    start = time.monotonic()
    while not (job_dir(sweep) / "checkpoint.pt").is_file():
        assert time.monotonic() - start < timeout, f"no checkpoint under {sweep}"
        time.sleep(0.5)
    return job_dir(sweep) / "checkpoint.pt"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["requeue", "usr2"])
def test_a_preempted_job_resumes_to_the_uninterrupted_images(cluster, tmp_path, how):
    buffer = f"buffer.dir={tmp_path / 'buffer'}"
    dd("dd-buffer", "dataset=digits", "model.width=6", "buffer.num_experts=2", "buffer.epochs=3", buffer,
       "progress=false", f"hydra.run.dir={tmp_path / 'buf'}")
    start = time.monotonic()
    dd("dd-distill", *LONG, buffer, f"hydra.run.dir={tmp_path / 'whole'}")
    uninterrupted_s = time.monotonic() - start
    sweep = tmp_path / "slurm"
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", DD_DEVICE="cpu")
    job = subprocess.Popen([str(BIN / "dd-distill"), "-m", *SLURM, *LONG, buffer, f"hydra.sweep.dir={sweep}"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    ckpt = wait_for_checkpoint(sweep)  # the job is running and has saved at least once
    (job_id,) = job_ids(sweep)
    saved_at = torch.load(ckpt, weights_only=True)["state"]["next_it"]
    if how == "requeue":  # what preemption does: the job is killed and queued again under its id
        subprocess.run(["scontrol", "requeue", job_id], check=True)
    else:  # what SLURM sends signal_delay_s before the time limit: submitit checkpoints and requeues
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    out, _ = job.communicate(timeout=900)
    assert job.returncode == 0, out[-4000:]
    run_dir = job_dir(sweep)
    log = (run_dir / "distill.log").read_text()
    assert re.search(r"requeued SLURM job \(restart \d+\): resuming", log), log[-3000:]
    a = load_file(str(run_dir / "distilled" / "data.safetensors"))["images"]
    b = load_file(str(tmp_path / "whole" / "distilled" / "data.safetensors"))["images"]
    assert torch.equal(a, b)
    resumed_at = re.findall(r"resumed from .* at iteration (\d+)", log)
    record(f"preemption_{how}", job=job_id, checkpoint_seen_at_iteration=saved_at, resumed_at_iteration=resumed_at,
           identical_to_uninterrupted=True, uninterrupted_s=round(uninterrupted_s, 1))


def test_slurm_launcher_without_slurm_is_one_line(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DDError, match="no sbatch on this machine's PATH"):
        check_choices(["hydra/launcher=slurm", "dataset=digits"])
