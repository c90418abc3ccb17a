"""Teacher-based distillation: teachers (cache, refusal, resume), relabelling (crops, stored vs online soft
labels, bytes), SRe2L's BatchNorm statistics, RDED's selection and stitching, the students' recipe
(AdamW, cosine), and the CLIs end to end on digits. Everything on the CPU."""

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import dies_at_call, run_cli
from omegaconf import OmegaConf
from safetensors.torch import load_file

from dd.data import load_image_dataset
from dd.errors import DDError
from dd.image import teachers
from dd.image.methods import rded, sre2l
from dd.image.relabel import (
    LabelStore,
    RelabelConfig,
    StoredLabels,
    TeacherLabels,
    apply_crops,
    draw_crops,
    generate,
)
from dd.image.teachers import TeacherConfig
from dd.image.train import lr_schedule, make_optimizer, train_on_set

DEVICE = torch.device("cpu")


def run_cfg(tmp_path, **teacher):
    t = {"model": {"name": "convnet", "norm": "batch", "width": 8}, "epochs": 2, "lr": 0.05, "cache_dir": str(tmp_path), **teacher}
    return OmegaConf.create({
        "dataset": {"zca": False, "zca_eps": 0.1, "train_limit": None},
        "model": {"name": "convnet", "width": 8},
        "buffer": OmegaConf.structured(__import__("dd.image.experts", fromlist=["BufferConfig"]).BufferConfig()),
        "teacher": OmegaConf.merge(OmegaConf.structured(TeacherConfig), t),
    })


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, digits_data):
    cfg = run_cfg(tmp_path_factory.mktemp("teachers"), epochs=3, lr=0.05)
    return teachers.get_teacher(cfg, digits_data, DEVICE, progress=False)


# --- the students' recipe -------------------------------------------------------------------------------

def test_cosine_schedule_is_torchs_cosine_annealing_stepped_per_epoch():
    s = lr_schedule(12, "cosine")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12)
    for epoch in range(12):
        assert s.lr(0.3, epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        opt.step()
        ref.step()
    assert s.epochs == 12 and not s.restarts_at(6)


def test_optimizer_choice():
    p = [torch.zeros(2, requires_grad=True)]
    adamw = make_optimizer("adamw", p, 1e-3, 0.9, 0.01)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.01
    assert isinstance(make_optimizer("sgd", p, 0.1, 0.9, 5e-4), torch.optim.SGD)
    with pytest.raises(DDError, match="eval.optimizer 'lbfgs'"):
        make_optimizer("lbfgs", p, 0.1, 0.9, 0.0)


# --- crops ------------------------------------------------------------------------------------------------

def test_crops_resample_the_region_they_name():
    x = torch.randn(3, 2, 8, 8)
    whole = torch.tensor([[0.5, 0.5, 1.0, 1.0, 0.0]]).expand(3, 5)
    assert torch.allclose(apply_crops(x, whole), x, atol=1e-6)
    flipped = whole.clone()
    flipped[:, 4] = 1
    assert torch.allclose(apply_crops(x, flipped), x.flip(3), atol=1e-6)
    # the top-left quarter, resized to 8x8: what bilinear interpolation of the 4x4 corner gives (torchvision's
    # crop-then-resize), except on the last row/column, which reads a quarter pixel of the image beyond the crop
    corner = torch.tensor([[0.25, 0.25, 0.5, 0.5, 0.0]]).expand(3, 5)
    expected = F.interpolate(x[:, :, :4, :4], size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(apply_crops(x, corner)[..., :7, :7], expected[..., :7, :7], atol=1e-5)


def test_drawn_crops_stay_inside_the_image_with_the_asked_area():
    c = draw_crops(20000, torch.Generator().manual_seed(0), (0.25, 0.8), flip=False)
    cy, cx, h, w, f = c.unbind(1)
    assert (cy - h / 2 >= -1e-6).all() and (cy + h / 2 <= 1 + 1e-6).all()
    assert (cx - w / 2 >= -1e-6).all() and (cx + w / 2 <= 1 + 1e-6).all()
    area, ratio = h * w, w / h
    unclipped = (h < 1) & (w < 1)
    assert area[unclipped].min() >= 0.25 - 1e-5 and area.max() <= 0.8 + 1e-5
    assert ratio[unclipped].min() >= 3 / 4 - 1e-5 and ratio[unclipped].max() <= 4 / 3 + 1e-5
    assert (f == 0).all()
    flips = draw_crops(20000, torch.Generator().manual_seed(1), (0.08, 1.0), flip=True)[:, 4]
    assert abs(float(flips.mean()) - 0.5) < 0.02


# --- stored and online soft labels --------------------------------------------------------------------------

@pytest.mark.parametrize("topk", [0, 3])
def test_stored_labels_are_the_teachers_softmax_on_the_stored_crops(teacher, digits_data, topk):
    images = digits_data.train_x[:12]
    cfg = OmegaConf.structured(RelabelConfig(topk=topk, scale_min=0.3))
    store = generate(teacher, images, 4, cfg, flip=False, seed=5, progress=False)
    classes = digits_data.num_classes
    width = topk or classes
    assert store.nbytes() == 4 * 12 * (5 * 2 + width * 2 + (width * 2 if topk else 0))  # fp16 (+ int16 classes)
    source = StoredLabels(store, temperature=4.0).prepare(4, 12, DEVICE)
    idx = torch.tensor([7, 0, 3])
    for epoch in (0, 3):
        x, target = source.batch(images[idx], idx, epoch, torch.Generator())
        crops = store.crops[epoch, idx].float()
        assert torch.allclose(x, apply_crops(images[idx], crops), atol=1e-6)
        logits = teacher.model(apply_crops(images[idx], crops)).detach()
        if topk:  # renormalised over the k largest logits, 0 elsewhere
            top = logits.topk(topk, dim=1)
            expected = torch.zeros_like(logits).scatter(1, top.indices, F.softmax(top.values / 4.0, dim=1))
        else:
            expected = F.softmax(logits / 4.0, dim=1)
        assert torch.allclose(target, expected, atol=2e-3)
    # epochs draw different crops
    assert not torch.equal(store.crops[0], store.crops[1])
    with pytest.raises(DDError, match="stores soft labels for 4 epochs but the evaluation trains 5"):
        StoredLabels(store, 4.0).prepare(5, 12, DEVICE)
    with pytest.raises(DDError, match="eval.temperature=0"):
        StoredLabels(store, 0.0)
    again = LabelStore.from_tensors(store.tensors(), classes)
    assert all(torch.equal(a, b) for a, b in zip(again.tensors().values(), store.tensors().values()))


def test_teacher_source_labels_fresh_crops_online(teacher, digits_data):
    images = digits_data.train_x[:6]
    source = TeacherLabels(teacher, 2.0, OmegaConf.structured(RelabelConfig()), flip=False)
    x1, t1 = source.batch(images, torch.arange(6), 0, torch.Generator().manual_seed(3))
    x2, _ = source.batch(images, torch.arange(6), 0, torch.Generator().manual_seed(4))
    assert not torch.allclose(x1, x2)  # the crops come from the model's own stream
    assert torch.allclose(t1, F.softmax(teacher.model(x1) / 2.0, dim=1), atol=1e-6)


def test_training_with_a_label_source_minimises_kl_to_its_targets(teacher, digits_data):
    """A student trained on stored labels at T = 1 ends closer to the teacher than where it started."""
    images = digits_data.train_x[:40]
    store = generate(teacher, images, 30, OmegaConf.structured(RelabelConfig(scale_min=1.0)), False, 0, False)
    source = StoredLabels(store, 1.0).prepare(30, 40, DEVICE)
    torch.manual_seed(0)
    student = sre2l_free_model(digits_data)
    whole = torch.tensor([[0.5, 0.5, 1.0, 1.0, 0.0]]).expand(40, 5)
    target = F.softmax(teacher.model(apply_crops(images, whole)), 1).detach()

    def kl():
        with torch.no_grad():
            return float(F.kl_div(F.log_softmax(student(images), 1), target, reduction="batchmean"))

    before = kl()
    train_on_set(student, images, torch.zeros(40, dtype=torch.long), schedule=lr_schedule(30, "cosine"), lr=3e-3,
                 batch_size=20, weight_decay=0.0, generator=torch.Generator().manual_seed(0), optimizer="adamw",
                 labels_from=source)
    assert kl() < 0.5 * before


def sre2l_free_model(data):
    from dd.models import build_model

    return build_model("convnet", data.channels, data.num_classes, data.image_size, width=8)


# --- teachers -------------------------------------------------------------------------------------------

def test_teacher_is_cached_checked_and_refused_on_other_preprocessing(tmp_path, digits_data, monkeypatch):
    cfg = run_cfg(tmp_path)
    t = teachers.get_teacher(cfg, digits_data, DEVICE, progress=False)
    folder = Path(t.manifest["folder"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["dataset"] == "digits" and manifest["model"]["norm"] == "batch"
    assert manifest["test_accuracy"] > 0.3 and not (folder / "partial.pt").exists()
    monkeypatch.setattr(teachers, "train_teacher", lambda *a, **k: pytest.fail("the cached teacher was retrained"))
    again = teachers.get_teacher(cfg, digits_data, DEVICE, progress=False)
    x = digits_data.test_x[:5]
    assert torch.equal(again.model(x), t.model(x))
    # another recipe is another teacher
    longer = run_cfg(tmp_path, epochs=3)
    assert teachers.teacher_dir(longer, teachers.teacher_identity(longer, digits_data)) != folder
    # the same folder for a run with other preprocessing or another dataset: refused, naming the difference
    small = load_image_dataset("digits", image_size=8)
    with pytest.raises(DDError, match="preprocessing.image_size"):
        teachers.load_teacher(folder, small, DEVICE)
    other = load_image_dataset("digits")
    other.name = "mnist"
    with pytest.raises(DDError, match="dataset is 'digits' in the teacher but 'mnist'"):
        teachers.load_teacher(folder, other, DEVICE)


class Unpicklable:
    """An arbitrary object: weights_only loading must refuse it."""


def test_given_state_dict_files(tmp_path, teacher, digits_data):
    model_cfg = teacher.manifest["model"]
    state = {f"module.{k}": v for k, v in teacher.model.state_dict().items()}  # as DataParallel saves it
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "t.pth")
    loaded = teachers.load_teacher(tmp_path / "t.pth", digits_data, DEVICE, model_cfg=model_cfg)
    x = digits_data.test_x[:4]
    assert torch.equal(loaded.model(x), teacher.model(x))
    assert loaded.manifest["test_accuracy"] == pytest.approx(teacher.manifest["test_accuracy"])

    torch.save({"state_dict": Unpicklable()}, tmp_path / "evil.pt")
    with pytest.raises(DDError, match="cannot be read as a state dict with weights_only"):
        teachers.load_teacher(tmp_path / "evil.pt", digits_data, DEVICE, model_cfg=model_cfg)
    with pytest.raises(DDError, match="does not fit the teacher architecture"):
        teachers.load_teacher(tmp_path / "t.pth", digits_data, DEVICE, model_cfg={"name": "convnet", "width": 16})
    with pytest.raises(DDError, match="does not exist"):
        teachers.load_teacher(tmp_path / "none.pt", digits_data, DEVICE, model_cfg=model_cfg)


def test_killed_teacher_training_resumes_to_the_same_weights(tmp_path, digits_data, monkeypatch):
    whole = teachers.get_teacher(run_cfg(tmp_path / "a", epochs=3), digits_data, DEVICE, progress=False)
    cfg = run_cfg(tmp_path / "b", epochs=3)
    real = teachers.write_file
    monkeypatch.setattr(teachers, "write_file", dies_at_call(real, 2))  # killed while saving epoch 1
    with pytest.raises(KeyboardInterrupt):
        teachers.get_teacher(cfg, digits_data, DEVICE, progress=False)
    monkeypatch.setattr(teachers, "write_file", real)
    resumed = teachers.get_teacher(cfg, digits_data, DEVICE, progress=False)
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


# --- SRe2L ------------------------------------------------------------------------------------------------

def test_bn_statistics_loss_is_the_distance_to_the_running_statistics(teacher, digits_data):
    stats = sre2l.BNStatistics(teacher.model)
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, inp: seen.append((m, inp[0].detach()))) for m in stats.layers]
    x = torch.randn(10, 1, 16, 16)
    teacher.model(x)
    for h in hooks:
        h.remove()
    stats.remove()
    expected = 0.0
    for i, (m, inp) in enumerate(seen):
        flat = inp.transpose(0, 1).reshape(inp.shape[1], -1)  # the authors' form: per channel over batch and pixels
        d = (m.running_var - flat.var(1, unbiased=False)).norm() + (m.running_mean - flat.mean(1)).norm()
        expected += (10.0 if i == 0 else 1.0) * float(d)
    assert float(stats.loss(10.0)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(DDError, match="needs a teacher with BatchNorm"):
        sre2l.BNStatistics(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)))


def test_recovered_images_read_as_their_class_and_the_bn_term_pulls_their_statistics_in(teacher, digits_data):
    m = OmegaConf.structured(sre2l.SRe2LConfig(name="sre2l", iterations=60, lr=0.1))
    images, labels = sre2l.recover(teacher, digits_data, 2, m, seed=0, device=DEVICE, progress=False)
    assert images.shape == (20, 1, 16, 16) and labels.tolist() == [c for c in range(10) for _ in range(2)]
    pixels = digits_data.to_pixels(images)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5  # clipped to valid pixels
    assert float((teacher.model(images).argmax(1) == labels).float().mean()) >= 0.9
    ce_only, _ = sre2l.recover(teacher, digits_data, 2, OmegaConf.merge(m, {"r_bn": 0.0}), seed=0, device=DEVICE,
                               progress=False)

    def bn_loss(x):  # one image per class, as recovered
        stats = sre2l.BNStatistics(teacher.model)
        teacher.model(x[::2])
        out = float(stats.loss(10.0))
        stats.remove()
        return out

    assert bn_loss(images) < 0.8 * bn_loss(ce_only)


# --- RDED ---------------------------------------------------------------------------------------------------

def test_stitch_puts_the_k_ipc_plus_i_th_crop_in_tile_k_of_image_i():
    ipc, factor = 3, 2
    crops = torch.arange(ipc * factor**2, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
    out = rded.stitch(crops, ipc, factor, (8, 8))
    for i in range(ipc):
        tiles = [out[i, 0, :4, :4], out[i, 0, :4, 4:], out[i, 0, 4:, :4], out[i, 0, 4:, 4:]]
        assert [float(t.unique()) for t in tiles] == [k * ipc + i for k in range(4)]
    assert rded.tile_sizes(7, 2) == [4, 3]
    assert rded.stitch(torch.zeros(4, 1, 4, 4), 1, 2, (7, 7)).shape == (1, 1, 7, 7)


def test_selection_keeps_the_crops_the_observer_finds_most_typical(digits_data):
    """An observer whose logit for the class is a crop's mean brightness: the lowest cross-entropy crops are the
    brightest, so the kept images are the class's brightest crops (checked against every crop scored)."""
    scored = []

    class Observer:
        def logits(self, x, batch_size=512):
            out = torch.zeros(len(x), digits_data.num_classes)
            out[:, 2] = 3 * x.mean((1, 2, 3))  # small enough that no two cross-entropies round to 0
            scored.append(x)
            return out

    m = OmegaConf.structured(rded.RDEDConfig(name="rded", factor=1, num_crop=3, mipc=40, scale_min=0.2))
    images = rded.select_class(Observer(), digits_data, 2, 4, m, seed=0, device=DEVICE)
    assert images.shape == (4, 1, 16, 16)
    means = scored[0].mean((1, 2, 3))
    per_image_best = means.view(3, 40).max(0).values
    assert torch.allclose(images.mean((1, 2, 3)).sort(descending=True).values,
                          per_image_best.sort(descending=True).values[:4], atol=1e-5)
    with pytest.raises(DDError, match="ipc \\* factor\\^2 = 4000"):
        rded.select_class(Observer(), digits_data, 2, 1000, OmegaConf.merge(m, {"factor": 2}), 0, DEVICE)


# --- the CLIs ------------------------------------------------------------------------------------------------

def _run(args, cache, in_process=False):
    """args[0] (dd-distill, dd-eval) with its own cache; in_process: called here (conftest.run_cli), for the runs
    whose command already runs as a real process in this file or elsewhere."""
    return run_cli(args[0], *args[1:], env={"DD_CACHE": cache}, in_process=in_process)


TINY = ["model.width=8", "teacher.model.width=8", "teacher.epochs=1", "eval.epochs=4", "eval.num_models=2",
        "progress=false"]


@pytest.mark.parametrize("preset,extra", [("digits_rded", ["ipc=1"]),
                                          ("digits_sre2l", ["ipc=1", "method.iterations=5", "relabel.topk=3"])])
def test_distill_stores_soft_labels_and_reports_their_bytes(tmp_path, preset, extra):
    out = tmp_path / "run"
    teacher = None
    if preset == "digits_rded":  # dd-teacher (a real process) trains the teacher the run then finds in the cache
        made = _run(["dd-teacher", f"experiment={preset}", *TINY, *extra, f"hydra.run.dir={tmp_path / 'teacher'}"],
                    tmp_path / "cache")
        assert made.returncode == 0, made.stderr[-2000:]
        teacher = re.search(r"^teacher (\S+): convnet on digits, test accuracy ", made.stdout, re.M).group(1)
    r = _run(["dd-distill", f"experiment={preset}", *TINY, *extra, f"hydra.run.dir={out}"], tmp_path / "cache",
             in_process=True)  # dd-distill as a real process: test_cli
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    meta = json.loads((out / "distilled" / "meta.json").read_text())
    tensors = load_file(str(out / "distilled" / "data.safetensors"))
    k = 3 if "relabel.topk=3" in extra else 10
    labels_bytes = 4 * 10 * (5 * 2 + k * 2 + (k * 2 if k < 10 else 0))  # 4 epochs x 10 images
    assert tensors["relabel_crops"].shape == (4, 10, 5) and tensors["relabel_logits"].shape == (4, 10, k)
    for s in (results["storage"], meta["storage"]):
        assert s["labels_bytes"] == labels_bytes and s["images_bytes"] == 10 * 16 * 16 * 4
    assert results["eval"]["labels"] == "stored" and results["eval"]["optimizer"] == "adamw"
    assert meta["teacher"]["folder"].startswith(str(tmp_path / "cache"))
    assert teacher is None or meta["teacher"]["folder"] == teacher
    if preset.startswith("digits_sre2l"):
        return  # dd-eval reads every teacher-based set alike: the rded case covers it
    # dd-eval: the stored labels, the teacher online, hard labels; more epochs than stored is refused
    evals = {labels: ["dd-eval", f"path={out}/distilled", "eval=relabel", "eval.epochs=3", "eval.num_models=1",
                      f"eval.labels={labels}", f"hydra.run.dir={tmp_path}/eval_{labels}", "progress=false"]
             for labels in ("stored", "teacher", "hard")}
    evals["too_long"] = ["dd-eval", f"path={out}/distilled", "eval=relabel", "eval.epochs=5",
                         f"hydra.run.dir={tmp_path}/x", "progress=false"]
    # in process (dd-eval as a real process: test_robust, test_torchrun)
    done = {name: _run(args, tmp_path / "cache", in_process=True) for name, args in evals.items()}
    for labels in ("stored", "teacher", "hard"):
        assert done[labels].returncode == 0, done[labels].stderr[-2000:]
        assert json.loads((tmp_path / f"eval_{labels}" / "results.json").read_text())["eval"]["labels"] == labels
    e = done["too_long"]
    assert e.returncode != 0 and "stores soft labels for 4 epochs" in e.stderr
    assert not (tmp_path / "x" / "results.json").exists()


def test_stored_labels_asked_of_a_set_without_them_is_one_line(tmp_path):
    r = _run(["dd-distill", "dataset=digits", "method=random", "ipc=1", "model.width=8", "eval.epochs=2",
              "eval.labels=stored", f"hydra.run.dir={tmp_path}/r", "progress=false"], tmp_path, in_process=True)
    assert r.returncode != 0
    assert "eval.labels=stored but the set stores no soft labels" in r.stderr and "Traceback" not in r.stderr


def test_a_set_without_a_teacher_is_evaluated_on_the_recipes_cached_teacher(tmp_path, digits_data):
    from dd.export import image_set

    idx = torch.cat([digits_data.indices_of_class(c)[:1] for c in range(10)])
    config = {"dataset": {"name": "digits", "zca": False, "zca_eps": 0.1, "train_limit": None}}
    image_set(digits_data.train_x[idx], digits_data.train_y[idx], digits_data, method="random", ipc=1,
              model={"name": "convnet", "width": 8}, config=config).save(tmp_path / "set")
    e = _run(["dd-eval", f"path={tmp_path}/set", "eval=relabel", "eval.epochs=2", "eval.num_models=1",
              "eval.labels=teacher", "teacher.model.width=8", "teacher.epochs=1", f"hydra.run.dir={tmp_path}/e",
              "progress=false"], tmp_path / "cache", in_process=True)
    assert e.returncode == 0, e.stderr[-2000:]
    assert json.loads((tmp_path / "e" / "results.json").read_text())["eval"]["labels"] == "teacher"
    [manifest] = (tmp_path / "cache" / "teachers").glob("digits_convnet_*/manifest.json")
    assert json.loads(manifest.read_text())["model"] == {"name": "convnet", "norm": "batch", "width": 8}


def test_a_killed_recovery_resumes_to_the_images_of_an_uninterrupted_one(tmp_path, teacher, digits_data, monkeypatch):
    m = OmegaConf.structured(sre2l.SRe2LConfig(name="sre2l", iterations=5))
    whole, _ = sre2l.recover(teacher, digits_data, 3, m, seed=1, device=DEVICE, progress=False)
    path = tmp_path / "checkpoint.pt"
    real = sre2l.write_file
    monkeypatch.setattr(sre2l, "write_file", dies_at_call(real, 2))  # killed while saving batch 1
    with pytest.raises(KeyboardInterrupt):
        sre2l.recover(teacher, digits_data, 3, m, 1, DEVICE, False, sre2l.Checkpoint(path, "d", resume=False))
    monkeypatch.setattr(sre2l, "write_file", real)
    saved = []

    class Counting(sre2l.Checkpoint):
        def save(self, batches):
            saved.append(len(batches))
            super().save(batches)

    resumed, _ = sre2l.recover(teacher, digits_data, 3, m, 1, DEVICE, False, Counting(path, "d", resume=True))
    assert saved == [2, 3]  # batch 0 came from the checkpoint; 1 and 2 were recovered
    assert torch.equal(resumed, whole)
    with pytest.raises(DDError, match="another dataset/model/method"):
        sre2l.Checkpoint(path, "other", resume=True).load()


def test_a_torchvision_resnet18_checkpoint_as_the_authors_save_it_loads_as_a_teacher(tmp_path, digits_data):
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=10)  # SRe2L's "resnet18_modified"
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = torch.nn.Identity()
    net.eval()
    wrapped = torch.nn.DataParallel(net)
    torch.save({"state_dict": wrapped.state_dict(), "acc": 0.0}, tmp_path / "ckpt.pth")
    t = teachers.load_teacher(tmp_path / "ckpt.pth", digits_data, DEVICE, model_cfg={"name": "tv_resnet18"})
    x = digits_data.test_x[:3]
    assert torch.equal(t.model(x), net(x)) and t.has_batchnorm


def test_every_teacher_based_preset_builds_a_batchnorm_teacher_and_its_student():
    from types import SimpleNamespace

    from hydra import compose, initialize_config_dir

    from dd.cli.common import CONF_DIR, choices
    from dd.config import register_configs
    from dd.image.train import new_model
    from dd.models import model_has_state

    register_configs()
    presets = [p for p in choices("experiment") if p.endswith(("_sre2l", "_rded"))]
    assert len(presets) >= 7
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for preset in presets:
            cfg = compose("config", overrides=[f"experiment={preset}"])
            data = SimpleNamespace(channels=3, num_classes=100, image_size=(32, 32))
            assert model_has_state(new_model(cfg.teacher.model, data)), preset
            new_model(cfg.model, data)
            assert cfg.eval.optimizer == "adamw" and cfg.eval.schedule == "cosine" and cfg.eval.labels == "stored"
