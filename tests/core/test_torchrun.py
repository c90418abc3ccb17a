"""The dd-* commands under torchrun, as a user starts them: real subprocesses, 2 processes, gloo on the CPU.

A job costs three process starts (torchrun and its two ranks): dd-buffer's job builds the experts that
dd-distill's job then adds to, and the refused one-process resume runs in this process."""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TORCHRUN, cli_env, run_cli

MTT = ["dataset=digits", "ipc=1", "model.width=6", "eval.epochs=3", "eval.num_models=3", "method=mtt",
       "buffer.num_experts=2", "buffer.epochs=3", "method.max_start_epoch=2", "method.expert_epochs=1",
       "method.syn_steps=3", "method.batch_syn=5", "method.iterations=4", "method.eval_every=2",
       "method.checkpoint_every=2", "method.lr_img=100", "progress=false", "logger=none"]


def records_of(buffer: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in buffer.glob("expert_*.json")), key=lambda r: r["id"])


@pytest.fixture(scope="module")
def buffer_job(tmp_path_factory):
    """dd-buffer under torchrun: experts 0-2 of the buffer MTT's job below reads (the same recipe)."""
    tmp = tmp_path_factory.mktemp("torchrun")
    done = run_cli("dd-buffer", "dataset=digits", "model.width=6", "buffer.num_experts=3", "buffer.epochs=3",
                   f"buffer.dir={tmp / 'buffer'}", "progress=false", f"hydra.run.dir={tmp / 'run'}", nproc=2)
    return tmp / "buffer", done, records_of(tmp / "buffer")


def test_dd_buffer_under_torchrun_shares_the_experts_out(buffer_job):
    _, done, records = buffer_job
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["id"] for r in records] == [0, 1, 2] and [r["rank"] for r in records] == [0, 1, 0]
    assert done.stdout.count("experts, 3 epochs each") == 1


def test_dd_distill_and_dd_eval_under_torchrun(tmp_path, buffer_job):
    buffer = buffer_job[0]
    assert buffer_job[1].returncode == 0, buffer_job[1].stderr[-3000:]
    run_dir = tmp_path / "run"
    # 5 experts: the job trains the two the buffer lacks, one on each rank
    done = run_cli("dd-distill", *MTT, "buffer.num_experts=5", f"buffer.dir={buffer}", f"hydra.run.dir={run_dir}",
                   nproc=2, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["device"]["world_size"] == 2 and len(results["metric"]["per_run"]) == 3
    assert done.stdout.count("mtt digits ipc=1: test accuracy") == 1  # rank 0 reports, once
    assert (run_dir / "distilled").is_dir() and (run_dir / ".hydra").is_dir()
    assert not list(tmp_path.glob("outputs*")) and not list(tmp_path.glob("dd-rank*"))
    records = records_of(buffer)
    assert [r["id"] for r in records] == [0, 1, 2, 3, 4] and sorted(r["rank"] for r in records[3:]) == [0, 1]

    # a resume with another number of processes is refused in one line (the sums would be taken otherwise)
    resumed = run_cli("dd-distill", *MTT, "buffer.num_experts=5", f"buffer.dir={buffer}", f"hydra.run.dir={run_dir}",
                      "resume=true", in_process=True)
    assert resumed.returncode == 2
    assert "written by a job of 2 process(es) but this one has 1" in resumed.stderr

    evaluated = run_cli("dd-eval", f"path={run_dir / 'distilled'}", "eval.epochs=3", "eval.num_models=3",
                        "progress=false", "logger=none", f"hydra.run.dir={tmp_path / 'eval'}", nproc=2)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    scored = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert scored["device"]["world_size"] == 2 and len(scored["metric"]["per_run"]) == 3


DIES = """
import os, sys, time, torch
from dd import dist
dist.init("cpu")
if dist.rank() == 1:
    {rank1}
t = torch.ones(3)
dist.all_sum_([t])
print("rank", dist.rank(), "never gets here", flush=True)
"""


@pytest.mark.parametrize("rank1, message", [
    ("raise RuntimeError('rank 1 broke')", "rank 1 broke"),  # a rank that fails
    ("time.sleep(120)", "(?i)timed out"),  # a rank that stops answering: the collective times out
])
def test_a_failing_rank_stops_the_job_in_bounded_time(tmp_path, rank1, message):
    script = tmp_path / "job.py"
    script.write_text(DIES.format(rank1=rank1))
    start = time.monotonic()
    done = subprocess.run([*TORCHRUN, "2", str(script)], capture_output=True, text=True,
                          env=cli_env(DD_DIST_TIMEOUT_S="5"), timeout=100)
    assert done.returncode != 0
    assert time.monotonic() - start < 60
    assert re.search(message, done.stderr + done.stdout), (done.stderr + done.stdout)[-3000:]
    assert "never gets here" not in done.stdout
