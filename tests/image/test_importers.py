"""dd-import: importers for MTT, DATM, DC, ImageFolder (SRe2L/RDED) and NCFM sets, each built
here in its authors' layout from digits tensors and checked against independently computed expectations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dd.cli.importer import main
from dd.data import load_image_dataset
from dd.export import load
from dd.importers import detect


class Opaque:  # a pickled object that is not a tensor: must never be unpickled
    def __init__(self):
        self.payload = [1, 2, 3]


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits")


@pytest.fixture(scope="module")
def digits_zca():
    return load_image_dataset("digits", zca=True)


@pytest.fixture(scope="module")
def picks(digits):
    return torch.cat([digits.indices_of_class(c)[:2] for c in range(10)])


def pixels_of(digits, x):
    """Normalised digits tensors -> pixels, computed here rather than with the library's to_pixels."""
    return x * digits.std[0] + digits.mean[0]


def run(path, out, *flags):
    main([str(path), str(out), "--dataset", "digits", *flags])
    return load(out)


def refused(capsys, path, out, *flags) -> str:
    with pytest.raises(SystemExit) as e:
        main([str(path), str(out), "--dataset", "digits", *flags])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert not out.exists()  # nothing half-written
    return err


def mtt_folder(folder, images, labels, lr=0.01):
    folder.mkdir()
    torch.save(images, folder / "images_best.pt")
    torch.save(labels, folder / "labels_best.pt")
    torch.save(torch.tensor(lr), folder / "lr_best.pt")
    return folder


def write_pngs(root, digits, picks, names, suffix=".png"):
    pixels = pixels_of(digits, digits.train_x[picks]).clamp(0, 1)
    for k, (p, y) in enumerate(zip(pixels, digits.train_y[picks].tolist())):
        (root / names[y]).mkdir(parents=True, exist_ok=True)
        a = (p[0] * 255).round().to(torch.uint8).numpy()
        Image.fromarray(a).save(root / names[y] / f"class{y:03d}_id{k:03d}{suffix}")
    return root


def test_mtt_tensors_kept_bit_for_bit(digits, picks, tmp_path):
    src = mtt_folder(tmp_path / "mtt", digits.train_x[picks], digits.train_y[picks], lr=0.03)
    assert detect(src) == "mtt"
    ds = run(src, tmp_path / "out")
    assert torch.equal(ds.images, digits.train_x[picks]) and torch.equal(ds.labels, digits.train_y[picks])
    assert float(ds.lr) == pytest.approx(0.03) and ds.meta["ipc"] == 2 and ds.meta["method"] == "mtt"
    assert ds.meta["source_format"] == "mtt" and ds.meta["imported_from"] == str(src.resolve())
    pre = ds.meta["source_preprocessing"]
    assert pre["space"] == "normalized" and pre["stated_by"].startswith("dataset.zca")
    assert ds.meta["converted"] == "kept as stored"


def test_dd_import_prints_one_summary_line(digits, picks, tmp_path, capsys):
    src = mtt_folder(tmp_path / "mtt", digits.train_x[picks], digits.train_y[picks])
    run(src, tmp_path / "out")
    assert capsys.readouterr().out == f"written: {tmp_path / 'out'} (20 digits images from mtt, kept as stored)\n"


def test_datm_logits_arrive_as_distributions(digits, picks, tmp_path, capsys):
    logits = torch.randn(len(picks), 10, generator=torch.Generator().manual_seed(0)) * 3
    src = mtt_folder(tmp_path / "datm", digits.train_x[picks], logits)
    assert detect(src) == "datm"
    ds = run(src, tmp_path / "out")
    expected = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)  # DATM's softmax at T = 1
    assert ds.labels.shape == (20, 10) and torch.allclose(ds.labels, expected, atol=1e-6)
    assert torch.allclose(ds.labels.sum(1), torch.ones(20)) and ds.meta["method"] == "datm"
    assert "softmax" in ds.meta["labels"]
    assert "--format datm" in refused(capsys, src, tmp_path / "o2", "--format", "mtt")


def test_ddlab_soft_labels_survive_mtt_pt_round_trip(digits, picks, tmp_path):
    from dd.convert import to_mtt_pt
    from dd.export import image_set

    probs = torch.softmax(torch.randn(20, 10, generator=torch.Generator().manual_seed(1)), 1)
    ds = image_set(digits.train_x[picks], probs, digits, method="datm", ipc=2, model={"name": "convnet"})
    to_mtt_pt(ds, tmp_path / "pt")
    assert torch.allclose(run(tmp_path / "pt", tmp_path / "back").labels, probs, atol=1e-6)


def test_dc_experiment_lands_unchanged_with_provenance(digits, picks, tmp_path, capsys):
    exps = [[digits.train_x[picks] + 0.01 * i, digits.train_y[picks]] for i in range(3)]
    path = tmp_path / "res_DC_digits_ConvNet_2ipc.pt"
    torch.save({"data": exps, "accs_all_exps": {"ConvNet": [np.float64(0.9), np.float64(0.91)]}}, path)
    assert detect(path) == "dc"
    ds = run(path, tmp_path / "out", "--experiment", "1")
    assert torch.equal(ds.images, exps[1][0]) and torch.equal(ds.labels, exps[1][1])
    assert ds.meta["experiments"] == 3 and ds.meta["experiment"] == 1 and ds.meta["method"] == "dc"
    assert ds.meta["model"] == {"name": "ConvNet"} and ds.meta["source_accuracies"] == {"ConvNet": [0.9, 0.91]}
    err = refused(capsys, path, tmp_path / "o2", "--experiment", "3")
    assert "--experiment 3" in err and "0..2" in err


def test_dc_into_zca_dataset_goes_through_pixels(digits, digits_zca, picks, tmp_path):
    path = tmp_path / "res_DM_digits_ConvNet_2ipc.pt"
    torch.save({"data": [[digits.train_x[picks], digits.train_y[picks]]], "accs_all_exps": {}}, path)
    ds = run(path, tmp_path / "out", "--zca")
    pixels = pixels_of(digits, digits.train_x[picks])
    assert ds.meta["zca"] and ds.meta["converted"].startswith("via pixels")
    assert torch.allclose(ds.images, digits_zca.zca.apply(pixels), atol=1e-4)
    assert torch.allclose(ds.pixels(), pixels.clamp(0, 1), atol=1e-4)


def test_zca_source_into_normalised_dataset(digits, digits_zca, picks, tmp_path):
    src = mtt_folder(tmp_path / "mtt", digits_zca.train_x[picks], digits_zca.train_y[picks])
    ds = run(src, tmp_path / "out", "--source-space", "zca")
    assert ds.meta["source_preprocessing"]["stated_by"] == "source_space" and not ds.meta["zca"]
    assert torch.allclose(ds.images, digits.train_x[picks], atol=1e-3)  # both are the same real digits
    kept = run(src, tmp_path / "out2", "--zca")  # the MTT recipe is ddlab's dataset.zca=true
    assert torch.equal(kept.images, digits_zca.train_x[picks])


@pytest.mark.parametrize("names, suffix", [([f"new{c:03d}" for c in range(10)], ".png"),  # SRe2L
                                           ([f"{c:05d}" for c in range(10)], ".jpg")])  # RDED
def test_imagefolder_pixels_round_trip(digits, picks, tmp_path, names, suffix):
    root = write_pngs(tmp_path / "syn", digits, picks, names, suffix)
    (root / "wandb_run_id.txt").write_text("x")  # stray files beside the class folders are ignored
    assert detect(root) == "imagefolder"
    ds = run(root, tmp_path / "out")
    got, want = [], []
    for c, name in enumerate(names):
        for f in sorted((root / name).iterdir()):
            want.append(torch.from_numpy(np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255))
            got.append(c)
    assert ds.labels.tolist() == got and ds.meta["class_folders"] == names
    assert (ds.pixels()[:, 0] - torch.stack(want)).abs().max() <= 1 / 255
    assert ds.meta["source_preprocessing"]["space"] == "pixels"


def test_sre2l_fkd_soft_labels_refused(digits, picks, tmp_path, capsys):
    root = write_pngs(tmp_path / "syn", digits, picks, [f"new{c:03d}" for c in range(10)])
    (root / "epoch_0").mkdir()
    torch.save([torch.zeros(4, 4), torch.zeros(4), None, None, None, torch.zeros(4, 10)], root / "epoch_0" / "batch_0.tar")
    err = refused(capsys, root, tmp_path / "out")
    assert "FKD" in err and "do not map to the images" in err


def test_ncfm_mosaics_decoded(digits, picks, tmp_path):
    pixels = pixels_of(digits, digits.train_x[picks]).clamp(0, 1)
    labels = digits.train_y[picks]
    path = tmp_path / "data_20000.pt"
    torch.save([pixels, labels], path)
    assert detect(path) == "ncfm"
    ds = run(path, tmp_path / "out", "--format", "ncfm")
    expected, ys = [], []
    for c in range(10):  # class by class; within a class crop (0,0) of every image, then (0,1), ...
        x = pixels[labels == c]
        for i in range(2):
            for j in range(2):
                expected.append(F.interpolate(x[:, :, 8 * i:8 * i + 8, 8 * j:8 * j + 8], size=(16, 16),
                                              mode="bilinear", align_corners=False))
                ys += [c] * len(x)
    assert ds.labels.tolist() == ys and ds.meta["ipc"] == 8 and ds.meta["stored_images"] == 20
    assert torch.allclose(ds.pixels(), torch.cat(expected), atol=1e-5)
    flat = run(path, tmp_path / "o1", "--factor", "1")
    assert torch.allclose(flat.pixels(), pixels, atol=1e-5) and len(flat.labels) == 20


def test_wrong_normalisation_refused(digits, picks, tmp_path, capsys):
    path = tmp_path / "data_1.pt"
    torch.save([digits.train_x[picks], digits.train_y[picks]], path)  # normalised tensors, read as NCFM pixels
    err = refused(capsys, path, tmp_path / "out")
    assert "pixels span" in err and "--source-space" in err
    assert run(path, tmp_path / "ok", "--source-space", "normalized").images.shape == (80, 1, 16, 16)
    res = tmp_path / "res_DC_digits_ConvNet_2ipc.pt"
    torch.save({"data": [[digits.train_x[picks] * 255, digits.train_y[picks]]]}, res)
    assert "pixels span" in refused(capsys, res, tmp_path / "out")
    assert run(res, tmp_path / "taken", "--no-range-check").meta["source_preprocessing"]["range_checked"] is False


def test_pickled_objects_refused_in_one_line(digits, picks, tmp_path, capsys):
    res = tmp_path / "res_DC_digits_ConvNet_2ipc.pt"
    torch.save({"data": [[digits.train_x[picks], digits.train_y[picks]]], "extra": Opaque()}, res)
    err = refused(capsys, res, tmp_path / "out")
    assert str(res) in err and "Opaque" in err and "weights_only" in err
    src = mtt_folder(tmp_path / "mtt", Opaque(), digits.train_y[picks])
    assert "images_best.pt" in refused(capsys, src, tmp_path / "out", "--format", "mtt")


def test_bad_inputs_refused(digits, picks, tmp_path, capsys):
    src = mtt_folder(tmp_path / "mtt", digits.train_x[picks], digits.train_y[picks])
    err = refused(capsys, src, tmp_path / "out", "--format", "kip")
    assert "--format" in err and "'kip'" in err and "ncfm" in err
    assert "--source-space" in refused(capsys, src, tmp_path / "out", "--source-space", "lab")
    assert "--factor only applies" in refused(capsys, src, tmp_path / "out", "--factor", "2")
    assert "only applies to a normalized" in refused(capsys, src, tmp_path / "out", "--source-space", "pixels",
                                                     "--source-stats", "mnist", "--no-range-check")
    assert "--dataset" in refused(capsys, src, tmp_path / "out", "--dataset")  # given without its value
    big = mtt_folder(tmp_path / "big", torch.zeros(2, 3, 32, 32), torch.tensor([0, 1]))
    assert "[2, 3, 32, 32]" in refused(capsys, big, tmp_path / "out")
    res = tmp_path / "res_DC_digits_ConvNet_2ipc.pt"
    torch.save({"data": [[digits.train_x[picks], digits.train_y[picks] + 5]]}, res)
    assert "0..9" in refused(capsys, res, tmp_path / "out")
    (src / "images_best.pt").unlink()
    assert "images_best.pt is missing" in refused(capsys, src, tmp_path / "out")
    assert "does not exist" in refused(capsys, tmp_path / "nowhere", tmp_path / "out")
    assert "invalid int value: 'one'" in refused(capsys, res, tmp_path / "out", "--experiment", "one")


def test_source_stats_other_than_the_targets_converted(digits, picks, tmp_path):
    pixels = pixels_of(digits, digits.train_x[picks])
    path = tmp_path / "res_DC_digits_ConvNet_2ipc.pt"
    torch.save({"data": [[(pixels - 0.1307) / 0.3081, digits.train_y[picks]]]}, path)  # MNIST's mean/std
    ds = run(path, tmp_path / "out", "--source-stats", "mnist")
    assert ds.meta["source_preprocessing"]["mean"] == [0.1307] and ds.meta["converted"].startswith("via pixels")
    assert torch.allclose(ds.images, digits.train_x[picks], atol=1e-5)
