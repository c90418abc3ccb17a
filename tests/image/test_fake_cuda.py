"""The image side "on CUDA" on a CPU (tests/fake_cuda.py): every path device-clean, hot loops free of host
syncs, resume and bad device names handled as a GPU machine would meet them.

The harness itself is tested first: a planted device mix, a CPU generator for a CUDA draw and a CUDA
generator state must each fail it, or the pipeline tests below prove nothing."""

import pytest
import torch
from conftest import dies_at_call, image_cfg
from fake_cuda import DeviceMismatch, FakeCuda, FakeCudaError
from omegaconf import OmegaConf

from dd.data import DSA
from dd.device import resolve_device
from dd.errors import DDError
from dd.image.evaluate import EvalConfig
from dd.models.factory import ModelConfig
from dd.pipeline import run

IMAGE = ["dataset=digits", "ipc=1", "model.width=6", "eval.epochs=2", "eval.num_models=2", "progress=false",
         "logger=none", "device=cuda"]
MATCHING = ["buffer.num_experts=2", "buffer.epochs=2", "buffer.batch_size=32", "method.expert_epochs=1",
            "method.max_start_epoch=2", "method.syn_steps=3", "method.batch_syn=5", "method.iterations=2",
            "method.eval_every=100", "method.checkpoint_every=1"]
TINY = {
    "mtt": ["method=mtt", *MATCHING, "method.lr_img=100"],
    "datm": ["method=datm", *MATCHING, "method.initial_max_start_epoch=1", "method.window_iterations=2"],
    "dc": ["method=dc", "method.iterations=2", "method.eval_every=100", "method.batch_real=8"],
    "dsa": ["method=dsa", "method.iterations=2", "method.eval_every=100", "method.batch_real=8"],
    "dm": ["method=dm", "method.iterations=2", "method.eval_every=100", "method.batch_real=8"],
    "herding": ["method=herding"],
    "sre2l": ["method=sre2l", "method.iterations=2", "teacher.model.width=4", "teacher.epochs=1"],
    "rded": ["method=rded", "method.factor=2", "method.mipc=20", "teacher.model.width=4", "teacher.epochs=1"],
}


def config(tmp_path, method: str, *extra, own_buffer=False):
    """The method's tiny run on fake CUDA. Experts come from this test run's cache (built once, on fake CUDA, by
    the first test that needs them; conftest: DD_CACHE) unless own_buffer (a folder of the test's own)."""
    # 300 training images keep the harness quick; DATM's experts need all of them to classify an image per class
    limit = [] if method == "datm" else ["dataset.train_limit=300"]
    mine = [f"buffer.dir={tmp_path / 'buffer'}"] if own_buffer else []
    return image_cfg(*IMAGE, *limit, *TINY[method], *mine, *extra)


# --- the harness catches what CUDA would refuse ------------------------------------------------------


def test_a_planted_device_mix_fails_the_harness_forward_backward_and_under_vmap(fake_cuda):
    x = torch.randn(4, 3)
    y = x.to("cuda")
    assert y.device.type == "cuda" and x.device.type == "cpu"
    with pytest.raises(DeviceMismatch):
        y + x
    w = torch.zeros(3, 2, requires_grad=True)  # a CPU leaf
    loss = (y @ w.to("cuda")).sum()
    loss.backward()  # the move's backward brings the gradient home: no mix
    assert w.grad.device.type == "cpu"
    with pytest.raises(DeviceMismatch):
        torch.func.vmap(lambda a, b: a + b)(y, x)
    with pytest.raises(DeviceMismatch):  # a mix inside a backward pass
        v = torch.randn(3, requires_grad=True)
        torch.autograd.grad((v.to("cuda") * 2).sum() + (v * x[0]).sum().to("cuda"), v)[0].to("cpu") + y[0]
    assert (y + torch.tensor(2.0)).device.type == "cuda"  # CPU 0-dim tensors are scalars to CUDA


def test_the_harness_refuses_a_cpu_generator_for_a_cuda_draw_and_a_cuda_generator_state(fake_cuda):
    with pytest.raises(FakeCudaError, match="generator"):
        torch.rand(3, generator=torch.Generator(), device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    assert torch.rand(3, generator=g, device="cuda").device.type == "cuda"
    with pytest.raises(FakeCudaError, match="generator"):
        torch.rand(3, generator=g)  # a CUDA generator for a CPU draw
    state = torch.Generator().get_state()
    with pytest.raises(TypeError, match="ByteTensor"):
        torch.Generator().set_state(state.to("cuda"))


def test_the_harness_counts_each_kind_of_host_sync(fake_cuda):
    y = torch.randn(5, device="cuda")
    fake_cuda.reset_counts()
    float(y.sum())
    y[torch.tensor([0, 1])]  # a CPU index: copied (and waited for) every time
    y.cpu()
    y[y > 0]  # a boolean mask: the output size needs the values
    torch.randn(5).to("cuda")  # a blocking copy from the host
    torch.randn(5).pin_memory().to("cuda", non_blocking=True)  # no wait
    assert dict(fake_cuda.sync_counts) == {"item": 1, "cpu_index": 1, "to_host": 1, "data_dep": 1, "h2d": 1}
    assert fake_cuda.syncs == 5


# --- device names --------------------------------------------------------------------------------------


def test_cuda_without_a_gpu_and_a_missing_gpu_index_are_refused_in_one_line(fake_cuda):
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DDError, match=r"device=cuda:7 .* 1 GPU\(s\); available: cpu, cuda:0"):
        resolve_device("cuda:7")


def test_cuda_on_a_machine_without_cuda_names_what_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DDError, match="device=cuda was asked for but CUDA is not available; available: cpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


# --- every image path, device-clean -------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["unroll", "reverse", "auto", "tesla", "higher"])
def test_mtt_runs_on_cuda_through_every_engine(tmp_path, fake_cuda, engine):
    results = run(config(tmp_path, "mtt", f"inner.engine={engine}"), tmp_path / "run")
    assert 0 <= results["metric"]["mean"] <= 1
    assert results["device"]["device"] == "cuda:0" and results["precision"]["meta_gradient"]["tf32"] is False


@pytest.mark.parametrize("method", ["datm", "dc", "dsa", "dm", "herding"])
def test_image_methods_run_on_cuda(tmp_path, fake_cuda, method):
    results = run(config(tmp_path, method), tmp_path / "run")
    assert 0 <= results["metric"]["mean"] <= 1 and results["device"]["device"] == "cuda:0"


@pytest.mark.parametrize("batched", [False, True])
def test_the_evaluators_run_on_cuda(digits_data, fake_cuda, batched):
    from dd.image.evaluate import evaluate_set

    idx = torch.cat([digits_data.indices_of_class(c)[:2] for c in range(10)])
    model = OmegaConf.structured(ModelConfig(name="convnet", width=4))
    cfg = OmegaConf.structured(EvalConfig(num_models=3, epochs=2, batched=batched, workers=2))
    result = evaluate_set(digits_data.train_x[idx], digits_data.train_y[idx], digits_data, model, cfg,
                          device="cuda", progress=False, predict=[digits_data.test_x[:5]] * 3)
    assert len(result.per_model) == 3 and all(p.shape == (5, 10) for p in result.predictions)


def test_robust_scores_run_on_cuda(digits_data, fake_cuda):
    from dd.image.robust import evaluate_robust

    idx = torch.cat([digits_data.indices_of_class(c)[:1] for c in range(10)])
    model = OmegaConf.structured(ModelConfig(name="convnet", width=4))
    cfg = OmegaConf.create({**OmegaConf.to_container(OmegaConf.structured(EvalConfig(num_models=1, epochs=1))),
                            "protocol": "robust", "robust_full_epochs": 1})
    soft = torch.softmax(torch.randn(10, 10), dim=1)
    for labels in (digits_data.train_y[idx], soft):
        result = evaluate_robust(digits_data.train_x[idx], labels, digits_data, model, cfg, device="cuda",
                                 progress=False)
        assert set(result.as_dict()) >= {"lrs", "ars", "conditions"}


@pytest.mark.parametrize("method,labels", [("sre2l", "stored"), ("rded", "teacher")])
def test_teacher_based_methods_and_their_label_sources_run_on_cuda(tmp_path, fake_cuda, method, labels):
    # the teacher: trained once (on fake CUDA) into this test run's cache, then found there
    cfg = config(tmp_path, method, f"eval.labels={labels}", "eval=relabel",
                 "eval.epochs=2", "eval.num_models=2")
    results = run(cfg, tmp_path / "run")
    assert 0 <= results["metric"]["mean"] <= 1 and results["eval"]["labels"] == labels
    assert results["device"]["device"] == "cuda:0"
    assert (results.get("storage", {}).get("labels_bytes", 0) > 0) is (labels == "stored")  # bytes the students use


@pytest.mark.parametrize("source", ["stored", "teacher"])
def test_an_evaluation_epoch_on_teacher_labels_waits_for_the_gpu_at_most_once(digits_data, fake_cuda, source):
    from dd.image.evaluate import evaluate_set
    from dd.image.relabel import LabelStore, RelabelConfig, StoredLabels, TeacherLabels, draw_crops
    from dd.image.teachers import Teacher, frozen
    from dd.image.train import new_model

    idx = torch.cat([digits_data.indices_of_class(c)[:3] for c in range(10)])
    model = OmegaConf.structured(ModelConfig(name="convnet", width=4))
    counts = {}
    for epochs in (2, 6):
        if source == "stored":
            crops = torch.stack([draw_crops(30, torch.Generator().manual_seed(e), (0.3, 1.0), False) for e in range(6)])
            labels = StoredLabels(LabelStore(crops.half(), torch.randn(6, 30, 10).half(), None, 10), 4.0)
        else:
            teacher = frozen(Teacher(new_model({"name": "convnet", "width": 4, "norm": "batch"}, digits_data), {}), "cuda")
            labels = TeacherLabels(teacher, 4.0, OmegaConf.structured(RelabelConfig()), flip=False)
        cfg = OmegaConf.structured(EvalConfig(num_models=1, epochs=epochs, batch_size=8, optimizer="adamw",
                                              schedule="cosine", workers=1))
        fake_cuda.reset_counts()
        evaluate_set(digits_data.train_x[idx], digits_data.train_y[idx], digits_data, model, cfg, device="cuda",
                     progress=False, labels_from=labels)
        counts[epochs] = fake_cuda.syncs
    assert counts[6] - counts[2] == 4, fake_cuda.report()  # the divergence check, once per epoch


def test_dsa_and_zca_on_cuda_give_the_cpu_numbers_without_a_wait(digits_zca_data, fake_cuda):
    x = torch.randn(6, 3, 12, 12)
    for mode in ("one", "color_then_one", "all"):
        dsa = DSA(mode=mode)
        fake_cuda.reset_counts()
        on_gpu = [dsa(x.to("cuda"), seed=s) for s in range(12)]
        stacked = dsa.stacked(x.expand(4, -1, -1, -1, -1).to("cuda"), list(range(4)))
        assert fake_cuda.syncs == 12 + 1  # the moves of x to the device, nothing else
        assert all(torch.equal(a.cpu(), dsa(x, seed=s)) for s, a in enumerate(on_gpu))
        assert torch.equal(stacked.cpu()[2], dsa(x, seed=2))
    zca = digits_zca_data.zca
    images = digits_zca_data.train_x[:4]
    assert torch.allclose(zca.apply(zca.invert(images.to("cuda"))).cpu(), images, atol=1e-4)


# --- no host sync in the hot loops -------------------------------------------------------------------


def _mtt_iteration_syncs(digits_data, harness, syn_steps: int, engine: str) -> int:
    from dd.image.methods import mtt
    from dd.image.train import new_model
    from dd.models import FlatModel

    m = mtt.MTTConfig(syn_steps=syn_steps, batch_syn=5)
    model = OmegaConf.structured(ModelConfig(name="convnet", width=4))
    student = FlatModel(new_model(model, digits_data).to("cuda"))
    gen = torch.Generator().manual_seed(0)
    images, labels = mtt.initial_images(digits_data, 1, "real", gen)
    syn = mtt.Synthetic.create(images.to("cuda"), labels.to("cuda"), 0.01, m)
    start = student.flatten()
    segment = mtt.Segment(0, 0, start, start + 0.01 * torch.randn(start.shape, device="cuda"))
    plan = mtt.plan_steps(len(labels), m.batch_syn, m.syn_steps, gen)
    inner = OmegaConf.create({"engine": engine, "optimizer": "sgd", "memory_budget_mb": None})
    harness.reset_counts()
    res = mtt.outer_iteration(syn, student, segment, plan, DSA(flip=False), inner, m.min_lr)
    res.is_finite(), res.loss_value(), res.is_finite()  # asked again: the answer is kept
    return harness.syncs


@pytest.mark.parametrize("engine", ["unroll", "reverse", "auto", "tesla"])
def test_an_mtt_iteration_waits_for_the_gpu_once_whatever_its_inner_steps(digits_data, fake_cuda, engine):
    # the plan's indices and each step's augmentation reach the device without a wait; the one read is the
    # finite check with the loss, after the meta-gradient
    counts = {steps: _mtt_iteration_syncs(digits_data, fake_cuda, steps, engine) for steps in (2, 6)}
    assert counts == {2: 1, 6: 1}, fake_cuda.report()


def _evaluation_syncs(digits_data, harness, epochs: int, batched: bool) -> int:
    from dd.image.evaluate import evaluate_set

    idx = torch.cat([digits_data.indices_of_class(c)[:3] for c in range(10)])
    model = OmegaConf.structured(ModelConfig(name="convnet", width=4))
    cfg = OmegaConf.structured(EvalConfig(num_models=2, epochs=epochs, batched=batched, batch_size=8,
                                          model_batch=2))
    harness.reset_counts()
    evaluate_set(digits_data.train_x[idx], digits_data.train_y[idx], digits_data, model, cfg, device="cuda",
                 progress=False)
    return harness.syncs


@pytest.mark.parametrize("batched", [False, True])
def test_an_evaluation_epoch_waits_for_the_gpu_at_most_once(digits_data, fake_cuda, batched):
    # 30 images in minibatches of 8: four steps an epoch; one read per epoch (the divergence check) per
    # training loop (each model when sequential, the stack when batched), plus the accuracies at the end
    short, long = (_evaluation_syncs(digits_data, fake_cuda, e, batched) for e in (2, 6))
    loops = 1 if batched else 2
    assert long - short == 4 * loops, fake_cuda.report()


def test_experts_wait_for_the_gpu_once_per_epoch(digits_data, fake_cuda):
    from dd.image.experts import expert_seeds, train_expert, train_experts_batched

    model = OmegaConf.structured(ModelConfig(name="convnet", width=4))
    counts = {}
    for epochs in (1, 3):
        recipe = {"lr": 0.01, "batch_size": 256, "dsa": True, "epochs": epochs}
        fake_cuda.reset_counts()
        traj, _ = train_expert(digits_data, model, recipe, expert_seeds(0, 0), "cuda", progress=False)
        one = fake_cuda.syncs
        fake_cuda.reset_counts()
        stacked = train_experts_batched(digits_data, model, recipe, [expert_seeds(0, 0), expert_seeds(0, 1)], "cuda",
                                        progress=False)
        counts[epochs] = (one, fake_cuda.syncs)
        assert traj.device.type == "cpu" and traj.shape[0] == epochs + 1
        assert torch.allclose(stacked[0][0], traj, rtol=1e-4, atol=1e-5)
    assert counts[3][0] - counts[1][0] == 2 and counts[3][1] - counts[1][1] == 2, counts


# --- resume and files across devices ----------------------------------------------------------------


@pytest.mark.parametrize("method,target", [("mtt", "dd.image.methods.mtt.meta_gradient"),
                                           ("datm", "dd.image.methods.mtt.meta_gradient"),
                                           ("dm", "dd.image.methods.dm.dm_iteration")])
def test_a_run_on_cuda_resumes_to_the_same_images(tmp_path, fake_cuda, monkeypatch, method, target):
    extra = ["method.iterations=4", "method.checkpoint_every=2"]
    run(config(tmp_path, method, *extra), tmp_path / "whole")
    module, name = target.rsplit(".", 1)
    real = getattr(__import__(module, fromlist=[name]), name)
    monkeypatch.setattr(module + "." + name, dies_at_call(real, 4))  # after the checkpoint at iteration 2
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path, method, *extra), tmp_path / "killed")
    monkeypatch.setattr(module + "." + name, real)
    run(config(tmp_path, method, *extra, "resume=true"), tmp_path / "killed")
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert torch.equal(a["images"], b["images"])


def test_a_checkpoint_and_a_buffer_made_on_one_device_serve_the_other(tmp_path, monkeypatch):
    extra = ["method.iterations=4", "method.checkpoint_every=2"]
    # buffer and run on the CPU
    whole = run(config(tmp_path, "mtt", *extra, "device=cpu", own_buffer=True), tmp_path / "cpu")
    import dd.image.methods.mtt as mtt

    real = mtt.meta_gradient
    monkeypatch.setattr(mtt, "meta_gradient", dies_at_call(real, 4))
    with FakeCuda(), pytest.raises(KeyboardInterrupt):  # the CPU buffer serves a CUDA run
        run(config(tmp_path, "mtt", *extra, own_buffer=True), tmp_path / "moved")
    monkeypatch.setattr(mtt, "meta_gradient", real)
    run(config(tmp_path, "mtt", *extra, "device=cpu", "resume=true", own_buffer=True), tmp_path / "moved")  # its checkpoint
    a = torch.load(tmp_path / "cpu" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "moved" / "checkpoint.pt", weights_only=True)
    assert torch.equal(a["images"], b["images"]) and whole["device"]["device"] == "cpu"
