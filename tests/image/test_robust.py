"""dd-eval eval.protocol=robust: DD-Ranking's LRS and ARS against hand-computed values, the random
subsets, which labels and augmentation each condition trains with, and a run as a user makes it."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import image_cfg, run_cli
from omegaconf import OmegaConf

import dd.image.robust as robust
from dd.errors import DDError
from dd.image.evaluate import EvalConfig, EvalResult, evaluate_set
from dd.image.robust import (
    CONDITIONS,
    augmentation_robust_score,
    evaluate_robust,
    format_robust,
    label_robust_score,
    normalise,
    random_subset,
)
from dd.models.factory import ModelConfig
from dd.table import collect, find_results, render

MODEL = OmegaConf.structured(ModelConfig(name="convnet", width=8))
E, INV_E = math.e, math.exp(-1)


# --- the scores -------------------------------------------------------------------------------------

def test_normalisation_maps_minus_one_to_zero_and_one_to_one():
    assert normalise(-1.0) == pytest.approx(0.0, abs=1e-12)
    assert normalise(1.0) == pytest.approx(1.0, abs=1e-12)
    # (1 - 1/e) / (e - 1/e) = 0.63212 / 2.35040
    assert normalise(0.0) == pytest.approx(0.268941, abs=1e-6)


def test_lrs_of_dd_rankings_dc_cifar10_ipc1_is_0_191_with_fractions():
    # its leaderboard's stored HLR 52.66% and IOR 12.40%: alpha = 0.5 * 0.1240 - 0.5 * 0.5266 = -0.2013,
    # e^-0.2013 = 0.81766, LRS = (0.81766 - 0.36788) / 2.35040 = 0.1914
    s = label_robust_score(full=0.7266, syn_hard=0.2000, syn_own=0.3000, rand_own=0.1760)
    assert float(s["hlr"]) == pytest.approx(0.5266, abs=1e-9)
    assert float(s["ior"]) == pytest.approx(0.1240, abs=1e-9)
    assert float(s["alpha"]) == pytest.approx(-0.2013, abs=1e-9)
    assert float(s["lrs"]) == pytest.approx(0.1914, abs=2e-4)
    assert round(float(s["lrs"]), 3) == 0.191


def test_percentages_as_dd_rankings_code_passes_them_leave_the_unit_interval():
    # alpha = 0.5 * 12.40 - 0.5 * 52.66 = -20.13: e^alpha ~ 0, so LRS ~ -e^-1 / (e - e^-1) = -0.1565
    s = label_robust_score(full=72.66, syn_hard=20.0, syn_own=30.0, rand_own=17.6)
    assert float(s["lrs"]) == pytest.approx(-0.15652, abs=1e-4)


def test_ars_hand_computed():
    # beta = 0.5 * (0.9 - 0.5) + 0.5 * (0.7 - 0.6) = 0.25; ARS = (1.284025 - 0.367879) / 2.350402 = 0.389782
    s = augmentation_robust_score(syn_aug=0.9, rand_aug=0.5, syn_noaug=0.7, rand_noaug=0.6)
    assert float(s["beta"]) == pytest.approx(0.25, abs=1e-12)
    assert float(s["ars"]) == pytest.approx(0.389782, abs=1e-6)


def test_scores_are_per_run_then_averaged():
    # run 0: alpha = 0.5*0.3 - 0.5*0.4 = -0.05, e^-0.05 = 0.951229 -> 0.583350 / 2.350402 = 0.248192
    # run 1: alpha = 0.5*0.3 - 0.5*0.1 = 0.10, e^0.10 = 1.105171 -> 0.737292 / 2.350402 = 0.313688
    s = label_robust_score(full=[0.9, 0.7], syn_hard=[0.5, 0.6], syn_own=[0.7, 0.8], rand_own=[0.4, 0.5])
    np.testing.assert_allclose(s["lrs"], [0.248192, 0.313688], atol=1e-6)
    # their mean 0.280940 is not the score of the mean alpha (0.025 -> 0.279713)
    assert np.mean(s["lrs"]) == pytest.approx(0.280940, abs=1e-6)


# --- the random subsets -----------------------------------------------------------------------------

def test_random_subset_is_class_balanced_redrawn_per_run_and_reproducible(digits_data):
    per_class = [3] * digits_data.num_classes
    runs = [random_subset(digits_data, per_class, seed=0, run=k) for k in range(3)]
    for idx in runs:
        assert len(idx) == 30 and len(set(idx.tolist())) == 30
        assert torch.bincount(digits_data.train_y[idx], minlength=10).tolist() == per_class
    assert not torch.equal(runs[0], runs[1]) and not torch.equal(runs[1], runs[2])
    assert torch.equal(random_subset(digits_data, per_class, seed=0, run=1), runs[1])
    assert not torch.equal(random_subset(digits_data, per_class, seed=1, run=1), runs[1])


def test_random_subset_follows_an_unbalanced_sets_class_counts(digits_data):
    per_class = [0, 1, 2, 0, 0, 0, 0, 0, 0, 5]
    idx = random_subset(digits_data, per_class, seed=0, run=0)
    assert torch.bincount(digits_data.train_y[idx], minlength=10).tolist() == per_class


def test_random_subset_larger_than_a_class_is_refused(digits_data):
    with pytest.raises(DDError, match="holds only"):
        random_subset(digits_data, [10_000] + [1] * 9, seed=0, run=0)


# --- which data, labels and augmentation each condition trains on -----------------------------------

class Recorder:
    """Stands in for evaluate_set: records each training and returns fixed accuracies per kind of data."""

    ACC = {"set": {"hard": 0.5, "soft": 0.7}, "random": {"hard": 0.4, "soft": 0.45}, "full": {"hard": 0.9}}

    def __init__(self, data):
        self.data, self.calls = data, []

    def __call__(self, images, labels, data, model_cfg, eval_cfg, *, lr, seed, device, progress, desc, predict,
                 labels_from=None):
        kind = "full" if images is data.train_x else "random" if isinstance(images, list) else "set"
        first = labels[0] if isinstance(labels, list) else labels
        label_kind = "soft" if first.dim() == 2 or labels_from is not None else "hard"
        self.calls.append({"name": desc.removeprefix("robust "), "kind": kind, "images": images, "labels": labels,
                           "dsa": bool(eval_cfg.dsa), "epochs": eval_cfg.epochs, "lr": lr, "predict": predict,
                           "labels_from": labels_from})
        k = eval_cfg.num_models
        acc = self.ACC[kind][label_kind] - (0.1 if not eval_cfg.dsa else 0.0)
        predictions = None
        if predict is not None:  # a "teacher": uniform probabilities, recognisable downstream
            predictions = [torch.full((len(x), data.num_classes), 1.0 / data.num_classes) for x in predict]
        return EvalResult([acc] * k, acc, 0.0, 3, lr, "convnet", 0.0, predictions=predictions)


def _tiny_set(data, soft: bool):
    idx = torch.cat([data.indices_of_class(c)[:2] for c in range(data.num_classes)])
    images, hard = data.train_x[idx], data.train_y[idx]
    if not soft:
        return images, hard
    return images, 0.55 * torch.nn.functional.one_hot(hard, 10).float() + 0.05


@pytest.mark.parametrize("soft", [False, True])
def test_conditions_train_on_the_labels_and_augmentation_they_name(digits_data, monkeypatch, soft):
    rec = Recorder(digits_data)
    monkeypatch.setattr(robust, "evaluate_set", rec)
    images, labels = _tiny_set(digits_data, soft)
    cfg = OmegaConf.structured(EvalConfig(num_models=3, epochs=3, dsa=True))
    res = evaluate_robust(images, labels, digits_data, MODEL, cfg, lr=0.02, seed=0, progress=False)
    calls = {c["name"]: c for c in rec.calls}
    # coinciding conditions are trained once: full first (the teacher), then in CONDITIONS order
    trained = ["full", "syn_hard", "syn_noaug", "rand_own", "rand_noaug"]
    if soft:  # and the random subsets with hard labels, for the hard-label LRS
        trained.insert(2, "syn_own")
        trained.append("rand_hard")
    assert [c["name"] for c in rec.calls] == trained
    assert all(c["lr"] == 0.02 for c in rec.calls)  # one recipe for every condition
    hard = labels.argmax(1) if soft else labels
    # the set with hard labels
    assert calls["syn_hard"]["images"] is images and calls["syn_hard"]["labels"].dim() == 1
    assert torch.equal(calls["syn_hard"]["labels"], hard) and calls["syn_hard"]["dsa"]
    # the set's own labels, with and without augmentation
    own = calls["syn_own"] if soft else calls["syn_hard"]
    assert own["labels"] is (labels if soft else hard) and own["dsa"]
    assert calls["syn_noaug"]["labels"] is own["labels"] and not calls["syn_noaug"]["dsa"]
    # the full training set, hard labels; with a soft set it labels the random subsets
    assert calls["full"]["images"] is digits_data.train_x and calls["full"]["labels"] is digits_data.train_y
    assert calls["full"]["dsa"]
    # random subsets: one per run, as many per class as the set, own recipe
    subsets = calls["rand_own"]["images"]
    assert len(subsets) == 3 and not torch.equal(subsets[0], subsets[1])
    assert not calls["rand_noaug"]["dsa"] and calls["rand_own"]["dsa"]
    for k, y in enumerate(calls["rand_own"]["labels"]):
        if soft:
            assert (calls["full"]["predict"][k] is subsets[k]) and torch.allclose(y, torch.full((20, 10), 0.1))
        else:
            assert y.dim() == 1 and torch.bincount(y, minlength=10).tolist() == [2] * 10
    if not soft:
        assert calls["full"]["predict"] is None
    # the scores from the recorder's accuracies, by hand
    out = res.as_dict()
    syn_own, rand_own = (0.7, 0.45) if soft else (0.5, 0.4)
    syn_noaug, rand_noaug = syn_own - 0.1, rand_own - 0.1
    alpha = 0.5 * (syn_own - rand_own) - 0.5 * (0.9 - 0.5)
    beta = 0.5 * (syn_own - rand_own) + 0.5 * (syn_noaug - rand_noaug)
    assert out["lrs"]["mean"] == pytest.approx((math.exp(alpha) - INV_E) / (E - INV_E), abs=1e-9)
    assert out["ars"]["mean"] == pytest.approx((math.exp(beta) - INV_E) / (E - INV_E), abs=1e-9)
    assert set(out["conditions"]) == set(CONDITIONS)
    alpha_hard = 0.5 * (0.5 - 0.4) - 0.5 * (0.9 - 0.5)
    assert out["lrs_hard"]["mean"] == pytest.approx((math.exp(alpha_hard) - INV_E) / (E - INV_E), abs=1e-9)
    assert out["conditions"]["syn_aug"]["same_run_as"] == ("syn_own" if soft else "syn_hard")
    assert out["conditions"]["rand_aug"]["same_run_as"] == "rand_own"
    assert ("same_run_as" in out["conditions"]["syn_own"]) is (not soft)
    assert out["conditions"]["syn_hard"]["labels"] == "hard" and out["conditions"]["full"]["labels"] == "hard"
    assert out["conditions"]["rand_own"]["labels"] == ("soft (teacher: full-data model k)" if soft else "hard")
    assert out["soft_labels"] is soft
    assert ("syn_own = syn_hard" in out["notes"][0]) is (not soft)


def test_teacher_label_source_scores_both_lrs_and_relabels_the_random_subsets(digits_data, monkeypatch):
    """DD-Ranking's soft-label protocol: the set trains on its label source, random subset k on a source of the
    same kind from the same teacher (relabel(x, k)); the hard-label LRS beside; no ARS conditions."""
    rec = Recorder(digits_data)
    monkeypatch.setattr(robust, "evaluate_set", rec)
    images, labels = _tiny_set(digits_data, soft=False)
    source = type("Stored", (), {"name": "stored"})()
    made = []

    def relabel(x, run):
        made.append((x, run))
        return ("source for subset", run)

    cfg = OmegaConf.structured(EvalConfig(num_models=3, epochs=3, dsa=True))
    res = evaluate_robust(images, labels, digits_data, MODEL, cfg, progress=False, labels_from=source,
                          relabel=relabel)
    calls = {c["name"]: c for c in rec.calls}
    assert [c["name"] for c in rec.calls] == ["full", "syn_hard", "syn_own", "rand_own", "rand_hard"]
    assert calls["syn_own"]["labels_from"] is source and calls["syn_hard"]["labels_from"] is None
    assert calls["rand_own"]["labels_from"] == [("source for subset", k) for k in range(3)]
    assert [x is s for (x, _), s in zip(made, calls["rand_own"]["images"])] == [True] * 3
    assert calls["rand_hard"]["labels_from"] is None and calls["full"]["predict"] is None  # no full-data teachers
    out = res.as_dict()
    soft_alpha = 0.5 * (0.7 - 0.45) - 0.5 * (0.9 - 0.5)
    hard_alpha = 0.5 * (0.5 - 0.4) - 0.5 * (0.9 - 0.5)
    assert out["lrs"]["mean"] == pytest.approx((math.exp(soft_alpha) - INV_E) / (E - INV_E), abs=1e-9)
    assert out["lrs_hard"]["mean"] == pytest.approx((math.exp(hard_alpha) - INV_E) / (E - INV_E), abs=1e-9)
    assert "ars" not in out and "syn_aug" not in out["conditions"]
    assert out["conditions"]["syn_own"]["labels"] == "soft (stored, the set's teacher)"
    assert not out["conditions"]["rand_own"]["dsa"] and out["conditions"]["rand_hard"]["dsa"]  # crops, not DSA
    assert "ARS" in format_robust(out)
    with pytest.raises(ValueError, match="come together"):
        evaluate_robust(images, labels, digits_data, MODEL, cfg, progress=False, labels_from=source)


def test_robust_full_epochs_shortens_only_the_full_data_condition(digits_data, monkeypatch):
    rec = Recorder(digits_data)
    monkeypatch.setattr(robust, "evaluate_set", rec)
    images, labels = _tiny_set(digits_data, soft=False)
    cfg = OmegaConf.structured(EvalConfig(num_models=2, epochs=30, robust_full_epochs=4))
    evaluate_robust(images, labels, digits_data, MODEL, cfg, progress=False)
    assert {c["name"]: c["epochs"] for c in rec.calls} == {
        "full": 4, "syn_hard": 30, "syn_noaug": 30, "rand_own": 30, "rand_noaug": 30}
    with pytest.raises(DDError, match="robust_full_epochs=0"):
        evaluate_robust(images, labels, digits_data, MODEL, OmegaConf.merge(cfg, {"robust_full_epochs": 0}),
                        progress=False)


def test_without_dsa_the_own_conditions_are_the_noaug_ones(digits_data, monkeypatch):
    rec = Recorder(digits_data)
    monkeypatch.setattr(robust, "evaluate_set", rec)
    images, labels = _tiny_set(digits_data, soft=False)
    cfg = OmegaConf.structured(EvalConfig(num_models=2, epochs=3, dsa=False))
    out = evaluate_robust(images, labels, digits_data, MODEL, cfg, progress=False).as_dict()
    assert out["conditions"]["syn_noaug"]["same_run_as"] == "syn_hard"
    assert out["conditions"]["rand_noaug"]["same_run_as"] == "rand_own"
    assert out["conditions"]["syn_aug"]["dsa"] and "same_run_as" not in out["conditions"]["syn_aug"]
    assert not out["conditions"]["full"]["dsa"]


# --- real training ------------------------------------------------------------------------------------

def test_syn_own_is_the_standard_evaluation_and_batching_keeps_every_condition(digits_data):
    images, labels = _tiny_set(digits_data, soft=True)
    runs = {}
    for batched in (False, True):
        cfg = OmegaConf.structured(EvalConfig(num_models=2, epochs=4, batched=batched))
        runs[batched] = evaluate_robust(images, labels, digits_data, MODEL, cfg, seed=1, progress=False)
    cfg = OmegaConf.structured(EvalConfig(num_models=2, epochs=4, batched=False))
    standard = evaluate_set(images, labels, digits_data, MODEL, cfg, seed=1, progress=False)
    assert runs[False].conditions["syn_own"].per_model == standard.per_model  # the same models
    one_image = 1 / len(digits_data.test_y)
    for name in CONDITIONS:  # per-model random sets and teachers: batched follows sequential
        np.testing.assert_allclose(runs[True].conditions[name].per_model, runs[False].conditions[name].per_model,
                                   atol=2 * one_image + 1e-9, err_msg=name)


def test_per_model_sets_train_model_k_on_set_k(digits_data):
    images, labels = _tiny_set(digits_data, soft=False)
    cfg = OmegaConf.structured(EvalConfig(num_models=2, epochs=3, batched=False))
    shared = evaluate_set(images, labels, digits_data, MODEL, cfg, progress=False)
    listed = evaluate_set([images, images], [labels, labels], digits_data, MODEL, cfg, progress=False)
    assert listed.per_model == shared.per_model
    other = digits_data.train_x[:20], digits_data.train_y[:20]
    mixed = evaluate_set([images, other[0]], [labels, other[1]], digits_data, MODEL, cfg, progress=False)
    assert mixed.per_model[0] == shared.per_model[0]  # model 0 trained on the same set from the same start
    with pytest.raises(ValueError, match="one per model"):
        evaluate_set([images], [labels], digits_data, MODEL, cfg, progress=False)


# --- the command ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_random_set(tmp_path_factory):
    """The set `dd-distill method=random` exports (made here by its pipeline; dd-distill itself runs in test_cli)."""
    from dd.pipeline import run

    out = tmp_path_factory.mktemp("robust") / "random"
    run(image_cfg("method=random", "model.width=8"), out)
    return out / "distilled"


def test_dd_eval_robust_writes_lrs_and_ars_in_the_unit_interval(digits_random_set, tmp_path, capsys):
    out = tmp_path / "robust"
    # in process (conftest.run_cli); dd-eval runs as a real process in test_torchrun and test_install
    r = run_cli("dd-eval", f"path={digits_random_set}", "eval.protocol=robust", "eval.num_models=2", "eval.epochs=3",
                f"hydra.run.dir={out}", "progress=false", in_process=True)
    assert r.returncode == 0, r.stderr
    assert "LRS" in r.stdout and "syn_own = syn_hard" in r.stdout
    res = json.loads((out / "results.json").read_text())
    rob = res["robust"]
    assert res["eval"]["protocol"] == "robust"
    for score in ("lrs", "ars"):
        assert 0.0 <= rob[score]["mean"] <= 1.0 and len(rob[score]["per_model"]) == 2
        assert all(0.0 <= v <= 1.0 for v in rob[score]["per_model"])
    assert set(rob["conditions"]) == set(CONDITIONS)
    for c in rob["conditions"].values():
        assert set(c) >= {"mean", "std", "per_model"} and len(c["per_model"]) == 2
    # a random set has hard labels: its own recipe is the hard one, and dd-eval's figure is syn_own
    assert rob["conditions"]["syn_own"]["per_model"] == rob["conditions"]["syn_hard"]["per_model"]
    assert res["metric"]["per_run"] == rob["conditions"]["syn_own"]["per_model"]
    hlr = np.subtract(rob["conditions"]["full"]["per_model"], rob["conditions"]["syn_hard"]["per_model"])
    assert rob["hlr"]["per_model"] == pytest.approx(hlr.tolist())
    # dd-table shows the two scores beside the accuracy
    table = render(collect(find_results([out])), "md")
    header = [h.strip() for h in table.splitlines()[0].strip("|").split("|")]
    assert header == ["method", "digits ipc1", "digits ipc1 LRS", "digits ipc1 ARS"]
    assert f"{rob['lrs']['mean']:.3f}" in table and "fractions" in table


def test_an_unknown_protocol_is_refused_before_anything_is_written(digits_random_set, tmp_path):
    out = tmp_path / "never"
    r = run_cli("dd-eval", f"path={digits_random_set}", "eval.protocol=fair", f"hydra.run.dir={out}", in_process=True)
    assert r.returncode == 2 and "eval.protocol 'fair' is unknown" in r.stderr and "standard, robust" in r.stderr
    assert not (out / "results.json").exists()


def test_dd_distill_leaves_the_robust_protocol_to_dd_eval():
    from dd.image.kind import KIND

    cfg = OmegaConf.create({"ipc": 1, "model": {"name": "convnet"}, "eval": {**vars(EvalConfig()), "protocol": "robust"},
                            "buffer": {}})
    with pytest.raises(DDError, match="dd-eval"):
        KIND.check(cfg)


def test_robust_full_epochs_without_the_robust_protocol_is_refused():
    from dd.image.evaluate import check_protocol

    with pytest.raises(DDError, match="robust_full_epochs=5 is read only with eval.protocol=robust"):
        check_protocol(OmegaConf.structured(EvalConfig(robust_full_epochs=5)))
    assert check_protocol(OmegaConf.structured(EvalConfig(protocol="robust", robust_full_epochs=5))) == "robust"
