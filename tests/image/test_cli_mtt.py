"""dd-buffer and dd-distill method=mtt as a user runs them, called in this process (conftest.run_cli: the same
argv, output and exit status; dd-buffer runs as a real process in test_torchrun, dd-distill in test_cli)."""

import json

from conftest import run_cli

from dd.export import load

TINY = ["dataset=digits", "model.width=6", "buffer.epochs=2", "progress=false"]


def test_dd_buffer_builds_resumes_and_shards(tmp_path):
    buf = tmp_path / "buf"
    first = run_cli("dd-buffer", *TINY, "buffer.num_experts=2", f"buffer.dir={buf}", f"hydra.run.dir={tmp_path / 'r1'}",
                    in_process=True)
    assert first.returncode == 0, first.stderr
    assert "2 experts" in first.stdout
    manifest = json.loads((buf / "manifest.json").read_text())
    assert manifest["dataset"] == "digits" and manifest["model"]["width"] == 6
    stamp = (buf / "expert_0000.safetensors").stat().st_mtime_ns
    # a shard adds expert 2 and leaves 0 and 1 alone
    shard = run_cli("dd-buffer", *TINY, "buffer.expert_ids=[2]", f"buffer.dir={buf}", f"hydra.run.dir={tmp_path / 'r2'}",
                    in_process=True)
    assert shard.returncode == 0, shard.stderr
    assert (buf / "expert_0000.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in buf.glob("expert_*.json")) == ["expert_0000.json", "expert_0001.json", "expert_0002.json"]
    # another model into the same folder is refused with exit 2 and one line
    bad = run_cli("dd-buffer", *TINY, "model.width=8", "buffer.num_experts=1", f"buffer.dir={buf}",
                  f"hydra.run.dir={tmp_path / 'r3'}", in_process=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "model.width is 6 in the buffer but 8" in bad.stderr


def test_dd_distill_mtt_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "method=mtt", "ipc=1", "buffer.num_experts=1", "method.max_start_epoch=1", "method.expert_epochs=1",
            "method.syn_steps=2", "method.iterations=2", "method.eval_every=1", "eval.epochs=5", "eval.num_models=1",
            f"buffer.dir={tmp_path / 'buf'}", f"hydra.run.dir={run_dir}"]
    out = run_cli("dd-distill", *args, in_process=True)  # a real process in test_cli
    assert out.returncode == 0, out.stderr
    assert "mtt digits ipc=1: test accuracy" in out.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == "mtt" and {"experts_s", "distill_s", "s_per_iteration"} <= set(results["timings"])
    ds = load(run_dir / "distilled")
    assert ds.meta["best_iteration"] in (0, 1, 2) and ds.meta["engine"] == "auto"  # the default engine
    assert len(list((run_dir / "progress").glob("iter_*.png"))) == 3
    last = load(run_dir / "distilled_last")  # the final state, beside the best one
    assert last.meta["iteration"] == 2 and last.images.shape == ds.images.shape


def test_mtt_bad_input_exits_2_without_output(tmp_path):
    run_dir = tmp_path / "run"
    out = run_cli("dd-distill", *TINY, "method=mtt", "method.lr_lr=-1", f"hydra.run.dir={run_dir}", in_process=True)
    assert out.returncode == 2
    assert "lr_lr=-1" in out.stderr and out.stderr.strip().count("\n") == 0
    assert not (run_dir / "results.json").exists() and not (run_dir / "distilled").exists()

