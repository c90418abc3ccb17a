"""Trajectory matching end to end on digits: buffers, resume, failure handling, export."""

import json

import pytest
import torch
from conftest import dies_at_call, image_cfg

from dd.errors import DDError
from dd.export import load
from dd.image.experts import Buffer
from dd.pipeline import run

TINY = [  # on conftest's tiny digits run
    "method=mtt", "eval.epochs=20", "buffer.num_experts=2", "buffer.epochs=3", "method.max_start_epoch=2",
    "method.expert_epochs=1", "method.syn_steps=3", "method.batch_syn=5", "method.iterations=6",
    "method.eval_every=100", "method.checkpoint_every=3", "method.lr_img=100",
]


def config(tmp_path, *extra, own_buffer=False):
    """The tiny MTT run. Its experts come from this test run's cache, built once for every test that only reads
    them (conftest: DD_CACHE); own_buffer: a folder of the test's own, for tests that change or count its files."""
    return image_cfg(*TINY, *([f"buffer.dir={tmp_path / 'buffer'}"] if own_buffer else []), *extra)


def test_distillation_lowers_the_loss_and_exports(tmp_path):
    cfg = config(tmp_path, "method.iterations=12", "method.lr_img=1000")
    results = run(cfg, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    losses = [h["loss"] for h in ckpt["state"]["history"] if "loss" in h]
    assert len(losses) == 12
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4  # matching improves
    ds = load(tmp_path / "run" / "distilled")
    assert ds.images.shape == (10, 1, 16, 16) and torch.isfinite(ds.images).all()
    assert ds.meta["method"] == "mtt" and ds.lr is not None and float(ds.lr) > 0
    assert 0 <= results["metric"]["mean"] <= 1
    assert (tmp_path / "run" / "grid.png").is_file() and (tmp_path / "run" / "curves.png").is_file()


def test_resume_reaches_the_same_images(tmp_path, monkeypatch):
    whole = run(config(tmp_path), tmp_path / "whole")
    assert whole["method"] == "mtt"
    import dd.image.methods.mtt as mtt

    real = mtt.meta_gradient
    # a kill at the fifth call, after the checkpoint at iteration 3
    monkeypatch.setattr(mtt, "meta_gradient", dies_at_call(real, 5))
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path), tmp_path / "killed")
    assert not (tmp_path / "killed" / "results.json").exists()
    monkeypatch.setattr(mtt, "meta_gradient", real)
    run(config(tmp_path, "resume=true"), tmp_path / "killed")
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert torch.equal(a["images"], b["images"])
    assert torch.equal(a["syn_lr"], b["syn_lr"])


def test_resume_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(DDError, match="does not exist"):
        run(config(tmp_path, "resume=true"), tmp_path / "nothing")


def test_buffer_skips_finished_experts_and_refuses_mismatch(tmp_path):
    from dd.image.experts import build_buffer
    from dd.image.kind import load_data

    cfg = config(tmp_path, "buffer.num_experts=2", own_buffer=True)
    data = load_data(cfg)
    buf = build_buffer(cfg, data, "cpu", ids=[0, 1], progress=False)
    assert buf.finished() == [0, 1]
    stamp = buf.file(0).stat().st_mtime_ns
    traj = buf.epochs(1, 0, 3)
    assert len(traj) == 2 or len(traj) == 3
    build_buffer(cfg, data, "cpu", ids=[0, 1, 2], progress=False)
    assert buf.file(0).stat().st_mtime_ns == stamp  # not retrained
    assert buf.finished() == [0, 1, 2]
    records = {r["id"]: r for r in buf.records()}
    assert set(records) == {0, 1, 2} and all(0 <= r["test_accuracy"] <= 1 for r in records.values())
    # a half-written expert (data file without its record) is retrained, not trusted
    buf.record_path(2).unlink()
    assert buf.finished() == [0, 1]
    other = config(tmp_path, "model.width=8", own_buffer=True)
    with pytest.raises(DDError, match="model.width is 6 in the buffer but 8 in this run"):
        build_buffer(other, data, "cpu", ids=[0], progress=False)
    with pytest.raises(DDError, match=r"preprocessing\.(mean|zca)"):  # ZCA data records mean 0
        zcfg = config(tmp_path, "dataset.zca=true", own_buffer=True)
        build_buffer(zcfg, load_data(zcfg), "cpu", ids=[0], progress=False)


def test_trajectory_matches_sequential_sgd(tmp_path):
    """Stored epochs are the expert's real parameters: epoch 0 is the seeded init."""
    from dd.image.experts import build_buffer
    from dd.image.kind import load_data
    from dd.image.train import new_model
    from dd.models import FlatModel

    cfg = config(tmp_path)
    data = load_data(cfg)
    buf = build_buffer(cfg, data, "cpu", ids=[0], progress=False)
    seed = json.loads(buf.record_path(0).read_text())["init_seed"]
    torch.manual_seed(seed)
    init = FlatModel(new_model(cfg.model, data)).flatten()
    (stored,) = buf.epochs(0, 0)
    assert torch.equal(stored, init)
    (last,) = buf.epochs(0, 3)
    assert not torch.equal(last, init)


def test_corrupt_expert_file_is_reported(tmp_path):
    from dd.image.experts import build_buffer
    from dd.image.kind import load_data

    cfg = config(tmp_path, own_buffer=True)
    buf = build_buffer(cfg, load_data(cfg), "cpu", ids=[0], progress=False)
    buf.file(0).write_bytes(b"not a safetensors file")
    with pytest.raises(DDError, match="cannot be read"):
        Buffer.open(buf.folder).epochs(0, 0)


def test_nonfinite_losses_stop_the_run_without_export(tmp_path, monkeypatch):
    import dd.image.methods.mtt as mtt
    from dd.inner import MetaGrad

    def poisoned(engine, step_loss, outer, theta0, learnables, lr, n, **options):
        nan = torch.tensor(float("nan"))
        return MetaGrad(nan, [torch.zeros_like(x) for x in learnables], torch.zeros_like(lr), theta0)

    monkeypatch.setattr(mtt, "meta_gradient", poisoned)
    with pytest.raises(DDError, match="not finite for 3 iterations in a row"):
        run(config(tmp_path, "method.max_nonfinite=3"), tmp_path / "run")
    assert not (tmp_path / "run" / "distilled").exists()
    assert not (tmp_path / "run" / "results.json").exists()


def test_learned_lr_never_goes_below_its_floor(tmp_path, monkeypatch):
    import dd.image.methods.mtt as mtt
    from dd.inner import MetaGrad

    def pushes_lr_negative(engine, step_loss, outer, theta0, learnables, lr, n, **options):
        return MetaGrad(torch.tensor(1.0), [torch.zeros_like(x) for x in learnables], torch.full_like(lr, 1e6), theta0)

    monkeypatch.setattr(mtt, "meta_gradient", pushes_lr_negative)
    run(config(tmp_path, "method.lr_lr=1", "method.min_lr=0.001"), tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert float(ckpt["syn_lr"]) == pytest.approx(0.001)
    assert float(load(tmp_path / "run" / "distilled").lr) > 0


def test_soft_labels_are_learned_and_exported(tmp_path):
    run(config(tmp_path, "method.soft_labels=true", "method.lr_label=10"), tmp_path / "run")
    ds = load(tmp_path / "run" / "distilled")
    assert ds.labels.shape == (10, 10) and ds.labels.dtype == torch.float32
    assert torch.allclose(ds.labels.sum(1), torch.ones(10), atol=1e-5)


@pytest.mark.parametrize("override,message", [
    ("method.syn_steps=0", "syn_steps=0"),
    ("method.max_start_epoch=5", "buffer.epochs=3"),
    ("method.lr_img=-1", "lr_img=-1"),
    ("inner.engine=magic", "inner.engine 'magic'"),
    ("method.pix_init=zeros", "pix_init 'zeros'"),
])
def test_bad_method_settings(tmp_path, override, message):
    with pytest.raises(DDError, match=message):
        run(config(tmp_path, override), tmp_path / "run")
    assert not (tmp_path / "run" / "results.json").exists()


def test_distillation_uses_exactly_the_configured_experts(tmp_path, monkeypatch):
    """A buffer folder shared with a bigger run holds more experts; this run draws only from its own."""
    from dd.image.experts import build_buffer
    from dd.image.kind import load_data

    cfg = config(tmp_path, own_buffer=True)
    build_buffer(cfg, load_data(cfg), "cpu", ids=[0, 1, 2, 3], progress=False)  # a bigger run's experts
    import dd.image.methods.mtt as mtt

    drawn = []
    real = mtt.draw_segment

    def recording(buffer, experts, *a, **k):
        segment = real(buffer, experts, *a, **k)
        drawn.append((tuple(experts), segment.expert))
        return segment

    monkeypatch.setattr(mtt, "draw_segment", recording)
    results = run(cfg, tmp_path / "run")
    assert drawn and all(experts == (0, 1) and e in (0, 1) for experts, e in drawn)
    assert load(tmp_path / "run" / "distilled").meta["experts"] == 2
    assert results["method"] == "mtt"


def test_eval_every_zero_reports_the_final_set_without_selection_rounds(tmp_path, monkeypatch):
    import dd.image.rounds as rounds

    calls = []
    monkeypatch.setattr(rounds, "evaluate_set", lambda *a, **k: calls.append(k["round"]))
    results = run(config(tmp_path, "method.eval_every=0"), tmp_path / "run")
    assert calls == []  # no selection round; only the final evaluation (round 0) ran
    assert "paper_max" not in results
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert not any("acc_mean" in h for h in ckpt["state"]["history"])
    ds = load(tmp_path / "run" / "distilled")
    assert torch.equal(ds.images, ckpt["images"]) and ds.meta["best_iteration"] == 6


def test_negative_eval_every_is_refused(tmp_path):
    with pytest.raises(DDError, match="method.eval_every=-1"):
        run(config(tmp_path, "method.eval_every=-1"), tmp_path / "run")
