"""dd-export formats, dd-import of them, and dd-eval, against the libraries that read them."""

import json

import pytest
import torch
from conftest import run_cli

from dd.convert import to_hf, to_imagefolder, to_mtt_pt, to_png
from dd.data import load_image_dataset
from dd.errors import DDError
from dd.export import image_set, load
from dd.importers import from_mtt_pt


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits")


@pytest.fixture
def saved_set(digits, tmp_path):
    idx = torch.cat([digits.indices_of_class(c)[:2] for c in range(10)])
    ds = image_set(digits.train_x[idx], digits.train_y[idx], digits, lr=torch.tensor(0.02), method="random", ipc=2,
                   model={"name": "convnet", "width": 6}, config={"dataset": {"name": "digits"}})
    return ds.save(tmp_path / "set")


def test_imagefolder_loads_with_torchvision(saved_set, tmp_path):
    import torchvision

    ds = load(saved_set)
    to_imagefolder(ds, tmp_path / "if")
    folder = torchvision.datasets.ImageFolder(str(tmp_path / "if"))
    assert len(folder) == 20 and len(folder.classes) == 10
    for (img, y), ref, label in zip(folder, ds.pixels(), ds.labels):
        assert y == int(label)  # folder order = our label order
        got = torch.tensor(list(img.convert("L").getdata()), dtype=torch.float32).view(16, 16) / 255
        assert (got - ref[0]).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only


def test_hf_dataset_round_trip(saved_set, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = load(saved_set)
    to_hf(ds, tmp_path / "hf")
    hf = datasets.load_from_disk(str(tmp_path / "hf"))
    assert len(hf) == 20 and hf.features["label"].names == [str(c) for c in range(10)]
    assert hf["label"] == ds.labels.tolist()
    assert hf[0]["image"].size == (16, 16)


def test_mtt_pt_round_trip(saved_set, digits, tmp_path):
    ds = load(saved_set)
    to_mtt_pt(ds, tmp_path / "pt")
    images = torch.load(tmp_path / "pt" / "images_best.pt", weights_only=True)
    assert torch.equal(images, ds.images)
    assert float(torch.load(tmp_path / "pt" / "lr_best.pt", weights_only=True)) == pytest.approx(0.02)
    back = from_mtt_pt(tmp_path / "pt", digits)
    assert torch.equal(back.images, ds.images) and torch.equal(back.labels, ds.labels)
    assert back.meta["ipc"] == 2 and float(back.lr) == pytest.approx(0.02)
    torch.save(torch.zeros(3, 3, 32, 32), tmp_path / "pt" / "images_best.pt")
    with pytest.raises(DDError, match="images_best.pt has shape"):
        from_mtt_pt(tmp_path / "pt", digits)


def test_png_grid_has_one_row_per_class(saved_set, tmp_path):
    from PIL import Image

    path = to_png(load(saved_set), tmp_path / "g.png")
    w, h = Image.open(path).size
    assert h > w / 2  # ten rows of two images: taller than a single strip


def test_dd_export_and_dd_import_clis(saved_set, tmp_path):
    ok = run_cli("dd-export", saved_set, str(tmp_path / "pt"), "--format", "mtt_pt")
    assert ok.returncode == 0 and ok.stdout == f"written: {tmp_path / 'pt'}\n", ok.stderr
    back = run_cli("dd-import", tmp_path / "pt", str(tmp_path / "back"), "--dataset", "digits")
    assert back.returncode == 0 and back.stdout.startswith(f"written: {tmp_path / 'back'} (20 digits images"), back.stderr
    assert torch.equal(load(tmp_path / "back").images, load(saved_set).images)
    z = str(tmp_path / "z")
    for bad, words in [
        ([str(saved_set), z, "--format", "jpg"], "format 'jpg' is unknown"),
        ([str(saved_set), z, "--format", "png", "--colour", "red"], "--colour"),
        ([str(saved_set), z], "--format"),
        ([str(tmp_path / "missing"), z, "--format", "png"], "does not exist"),
        ([str(tmp_path / "pt"), z, "--format", "ddlab"], "dd-import SOURCE OUT --dataset"),  # imports moved
        ([f"path={tmp_path / 'pt'}", "format=ddlab", "dataset=digits", f"out={z}"], "dd-import SOURCE OUT --dataset"),
        ([f"path={saved_set}", "format=png", f"out={z}"], "key=value arguments are gone"),
    ]:
        r = run_cli("dd-export", *bad, in_process=True)  # a fresh process starts silently: test_cli
        assert r.returncode == 2 and words in r.stderr and r.stderr.strip().count("\n") == 0, (bad, r.stderr)
        assert r.stderr.startswith("dd-export: error: ")
    r = run_cli("dd-import", tmp_path / "pt", z, in_process=True)
    assert r.returncode == 2 and "--dataset" in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "z").exists()


def test_dd_eval_cli_writes_results_beside_the_set_meta(saved_set, tmp_path):
    run = tmp_path / "eval"
    # in process (conftest.run_cli); dd-eval runs as a real process in test_robust and test_torchrun
    r = run_cli("dd-eval", f"path={saved_set}", "model=mlp", "eval.epochs=3", "eval.num_models=2", "progress=false",
                f"hydra.run.dir={run}", in_process=True)
    assert r.returncode == 0, r.stderr
    results = json.loads((run / "results.json").read_text())
    assert results["model"] == "mlp" and results["distilled_with"] == "convnet" and results["method"] == "random"
    assert len(results["metric"]["per_run"]) == 2 and results["eval"]["lr"] == pytest.approx(0.02)
    assert json.loads((run / "set_meta.json").read_text())["sha256"] == load(saved_set).meta["sha256"]
    bad = run_cli("dd-eval", f"path={tmp_path / 'missing'}", f"hydra.run.dir={tmp_path / 'e2'}", in_process=True)
    assert bad.returncode == 2 and "missing" in bad.stderr
