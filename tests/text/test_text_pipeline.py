"""Text runs end to end on a tiny BERT: the CLI, export, resume, and refusals before any output."""

import json

import pytest
import torch
from conftest import REPO, compose, run_cli
from omegaconf import OmegaConf

from dd.config import register_configs
from dd.errors import DDError
from dd.export import load
from dd.pipeline import run

register_configs()

TINY = [
    "experiment=topics_attn", "model=tiny_bert", "dataset.num_train=48", "dataset.num_test=32",
    "dataset.max_length=8", "method.max_steps=4", "method.real_batch_size=8", "method.checkpoint_every=2",
    "eval.num_models=2", "progress=false", "logger=none",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: one thread is faster


def config(*extra):
    cfg = compose(*TINY, *extra)
    return cfg


def bare(*extra):
    """The tiny config without the comparison baselines (they are checked in the CLI test)."""
    cfg = config(*extra)
    cfg.method.compare = {}
    return cfg


def test_cli_writes_results_comparisons_and_a_loadable_set(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("dd-distill", *TINY, "method.compare.random.holdout=16", "method.compare.random.grid_runs=1",
                   "method.compare.full.epochs=1", "method.compare.full.num_runs=1", f"hydra.run.dir={out}",
                   env={"HF_HUB_OFFLINE": "1"}, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    for name in ("attention_labels", "random", "full"):
        assert any(line.lstrip().startswith(name) for line in lines), proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "attention_labels" and results["dataset"] == "synthetic_topics"
    assert results["model"] == "tiny_bert" and results["ipc"] == 1 and len(results["metric"]["per_run"]) == 2
    assert set(results["comparison"]) == {"random", "full"}
    assert results["timings"]["s_per_outer_step"] > 0 and results["timings"]["peak_rss_mb"] > 0
    # a text run records the settings it reads: not the image evaluator's, nor the expert buffer
    assert results["kind"] == "text" and results["metric"]["name"] == "accuracy"
    assert results["config"]["eval"]["num_models"] == 2 and not {"buffer", "prune"} & set(results["config"])
    for name in ("random", "full"):  # each comparison is a row dd-table can read
        sub = json.loads((out / "compare" / name / "results.json").read_text())
        assert sub["method"] == name and 0 <= sub["metric"]["mean"] <= 1

    ds = load(out / "distilled")
    t = ds.tensors
    assert ds.kind == "text"
    n, length = 4, 8
    assert t["inputs_embeds"].shape == (n, length, 32) and t["attention_mask"].shape == (n, length)
    assert t["labels"].shape == (n, 4)  # unrestricted label vectors
    assert t["attention_labels"].shape == (n, 2, 2, 1, length)
    torch.testing.assert_close(t["attention_labels"].sum(-1), torch.ones(n, 2, 2, 1))
    assert t["lr"].shape == (1,) and (t["lr"] > 0).all()
    assert ds.meta["backbone"].startswith("tiny_bert") and ds.meta["class_names"][0].startswith("synthetic")
    assert len(ds.meta["preview"]) == n and (out / "preview.txt").is_file()
    # preview.txt: per example its label vector and the 3 key positions its [CLS] attention label weights most
    preview = (out / "preview.txt").read_text().splitlines()
    share = t["attention_labels"][:, :, :, 0].mean(dim=(1, 2))
    for j, line in enumerate(preview):
        assert line.startswith(f"{j} class=") and "label=[" in line
        where = [int(p.split(":")[0]) for p in line.split(" | attends ")[1].split()]
        assert where == share[j].topk(3).indices.tolist()

    # the exported set re-trains to the very accuracy reported (same backbone, seeds and protocol)
    from dd.data.text import load_text_dataset
    from dd.models.bert import TextClassifier, load_backbone
    from dd.text.evaluate import TextSet, evaluate_text_set

    cfg = config()
    backbone = load_backbone(cfg.model)
    data = load_text_dataset(cfg.dataset, backbone.tokenizer)
    clf = TextClassifier(backbone, data.num_classes)
    tset = TextSet(t["inputs_embeds"], t["attention_mask"], t["token_type_ids"], t["labels"], t["lr"],
                   num_classes=4, attention_labels=t["attention_labels"])
    again = evaluate_text_set(clf, tset, data, 2, seed=0, progress=False)
    assert again.per_model == pytest.approx(results["metric"]["per_run"], abs=1e-6)


def test_resume_reaches_the_same_tensors(tmp_path, monkeypatch):
    run(bare(), tmp_path / "whole")
    import dd.text.methods.attention_labels as al

    real = al.meta_gradient
    calls = {"n": 0}

    def dies_at_fourth(*a, **k):  # a kill after the checkpoint at step 2
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(al, "meta_gradient", dies_at_fourth)
    with pytest.raises(KeyboardInterrupt):
        run(bare(), tmp_path / "killed")
    assert not (tmp_path / "killed" / "results.json").exists()
    monkeypatch.setattr(al, "meta_gradient", real)
    run(bare("resume=true"), tmp_path / "killed")
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert a["state"]["next_step"] == b["state"]["next_step"] == 4
    for name in a["tensors"]:
        assert torch.equal(a["tensors"][name], b["tensors"][name]), name


@pytest.mark.parametrize("overrides,message", [
    (["ipc=0"], "ipc=0"),
    (["method.label_type=fuzzy"], "label_type 'fuzzy'"),
    (["method.batch_per_class=2", "ipc=3"], "must divide ipc=3"),
    (["method.length=0"], "method.length=0"),
    (["method.init=real", "method.length=9"], "at most dataset.max_length=8"),
    (["dataset=text_files", "dataset.train_file=/nonexistent/train.csv", "dataset.test_file=/nonexistent/t.csv"],
     "does not exist"),
    (["model=convnet"], "model 'convnet' is an image model"),
])
def test_bad_input_is_refused_before_any_output(tmp_path, overrides, message):
    cfg = bare(*overrides)
    with pytest.raises(DDError, match=message):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "results.json").exists()
    assert not (tmp_path / "run" / "distilled").exists()


def test_text_methods_and_image_data_refuse_each_other(tmp_path):
    """The CLI refuses a method or an evaluator key of the other kind before Hydra starts; a Python user's
    config that names one anyway is refused by dd.pipeline.run before anything is written."""
    from dd.cli.common import check_choices

    with pytest.raises(DDError, match="method 'attention_labels' is a text method; image runs"):
        check_choices(["dataset=digits", "method=attention_labels"])
    with pytest.raises(DDError, match="method 'mtt' is an image method; text runs"):
        check_choices(["dataset=synthetic_topics", "method=mtt"])
    with pytest.raises(DDError, match="'epochs' is not a key of a text run's eval"):
        check_choices(["dataset=synthetic_topics", "eval.epochs=10"])
    txt = bare()
    OmegaConf.set_struct(txt, False)
    txt.method = {"name": "mtt"}
    with pytest.raises(DDError, match="method 'mtt' is an image method"):
        run(txt, tmp_path / "b")
    assert not any(tmp_path.rglob("results.json"))
