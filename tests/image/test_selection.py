"""Choosing without peeking: dataset.holdout_per_class, method.select=test|val, method.select_lrs, and
results.json's `selection` (dd.image.rounds)."""

import pytest
import torch
from conftest import image_cfg

import dd.image.rounds as rounds
from dd.config import register_configs
from dd.data import ZCA, load_image_dataset
from dd.data.images import holdout_indices
from dd.errors import DDError
from dd.export import load
from dd.image.evaluate import EvalResult
from dd.image.experts import Buffer, buffer_identity
from dd.pipeline import run

register_configs()

QUIET = ["dataset=digits", "ipc=1", "model.width=6", "eval.epochs=5", "eval.num_models=1", "progress=false",
         "logger=none"]
MTT = ["method=mtt", "buffer.num_experts=1", "buffer.epochs=2", "method.max_start_epoch=1", "method.expert_epochs=1",
       "method.syn_steps=2", "method.batch_syn=5", "method.iterations=6", "method.eval_every=2",
       "method.checkpoint_every=100"]
DC = ["method=dc", "method.iterations=4", "method.eval_every=2", "method.batch_real=16", "method.checkpoint_every=100"]
DM = ["method=dm", "method.iterations=4", "method.eval_every=2", "method.batch_real=16", "method.checkpoint_every=100"]


def config(*overrides):
    return image_cfg(*QUIET, *overrides)


# --- the held-out split -----------------------------------------------------------------------------


def test_holdout_moves_a_class_balanced_part_of_the_training_split_out_of_it(digits_data):
    d = load_image_dataset("digits", holdout_per_class=7)
    assert torch.equal(d.val_y.bincount(), torch.full((10,), 7))
    assert len(d.train_y) == len(digits_data.train_y) - 70 and torch.equal(d.test_x, digits_data.test_x)
    held = holdout_indices(digits_data.train_y, 7, 10, "digits")
    kept = torch.ones(len(digits_data.train_y), dtype=torch.bool)
    kept[held] = False
    # the held-out images are exactly those rows of the full split, and the kept ones the rest, in order
    assert torch.equal(d.val_x, digits_data.train_x[held]) and torch.equal(d.val_y, digits_data.train_y[held])
    assert torch.equal(d.train_x, digits_data.train_x[kept]) and torch.equal(d.train_y, digits_data.train_y[kept])
    assert d.mean == digits_data.mean  # the statistics do not move
    assert torch.equal(load_image_dataset("digits", holdout_per_class=7).val_x, d.val_x)  # the same every time
    assert digits_data.val_x is None


def test_holdout_is_left_out_of_the_zca_fit():
    d = load_image_dataset("digits", zca=True, holdout_per_class=5)
    raw = load_image_dataset("digits", holdout_per_class=5)  # mean 0, std 1 with zca: compare in raw pixels
    pixels = (raw.train_x * torch.tensor(raw.std).view(1, -1, 1, 1)) + torch.tensor(raw.mean).view(1, -1, 1, 1)
    fitted = ZCA.fit(pixels, eps=0.1)
    torch.testing.assert_close(d.train_x, fitted.apply(pixels))
    val_pixels = raw.val_x * torch.tensor(raw.std).view(1, -1, 1, 1) + torch.tensor(raw.mean).view(1, -1, 1, 1)
    torch.testing.assert_close(d.val_x, fitted.apply(val_pixels))


@pytest.mark.parametrize("per_class, message", [
    (-1, "dataset.holdout_per_class=-1 is not allowed"),
    (200, "dataset.holdout_per_class=200 is not allowed: class 0 of digits has only"),
])
def test_bad_holdout_is_refused(per_class, message):
    with pytest.raises(DDError, match=message):
        load_image_dataset("digits", holdout_per_class=per_class)


def test_val_view_scores_on_the_held_out_split(digits_data):
    d = load_image_dataset("digits", holdout_per_class=3)
    view = d.val_view()
    assert view.test_x is d.val_x and view.test_y is d.val_y and view.train_x is d.train_x
    with pytest.raises(DDError, match="dataset.holdout_per_class"):
        digits_data.val_view()


def test_buffer_identity_carries_the_holdout_so_other_splits_are_refused(tmp_path, digits_data):
    plain = buffer_identity(config(*MTT), digits_data)
    assert "holdout_per_class" not in plain["preprocessing"]  # buffers made before the key keep their identity
    held = buffer_identity(config(*MTT, "dataset.holdout_per_class=5"), load_image_dataset("digits", holdout_per_class=5))
    assert held["preprocessing"]["holdout_per_class"] == 5
    Buffer.open(tmp_path / "b", held, create=True)
    with pytest.raises(DDError, match="preprocessing.holdout_per_class is 5 in the buffer but None in this run"):
        Buffer.open(tmp_path / "b", plain)
    Buffer.open(tmp_path / "c", plain, create=True)
    with pytest.raises(DDError, match="holdout_per_class is None in the buffer but 5"):
        Buffer.open(tmp_path / "c", held)


# --- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [MTT, DC, DM, ["method=datm"], ["method=dsa"]])
def test_select_val_without_a_holdout_is_refused_in_one_line_naming_both_keys(tmp_path, method):
    with pytest.raises(DDError) as e:
        run(config(*method, f"buffer.dir={tmp_path / 'buffer'}", "method.select=val"), tmp_path / "run")
    text = str(e.value)
    assert "method.select=val" in text and "dataset.holdout_per_class=0" in text and "\n" not in text
    assert not (tmp_path / "buffer").exists()  # refused before any expert was trained


@pytest.mark.parametrize("overrides, message", [
    (DC + ["method.select=test", "method.select_lrs=[0.01]"], r"method.select_lrs=\[0.01\] is read only with method.select=val"),
    (DM + ["method.select_lrs=[0.01]"], "with method.select=last the set is evaluated at eval.lr"),
    (DC + ["method.select=val", "dataset.holdout_per_class=2", "method.select_lrs=[]"], "non-empty list of positive"),
    (DM + ["method.select=val", "dataset.holdout_per_class=2", "method.select_lrs=[0.01,-1]"], r"\[0.01, -1.0\]"),
    (MTT + ["method.select=best"], "method.select 'best' is unknown; choose one of: test, val"),
    (MTT + ["method.select=val", "dataset.holdout_per_class=2", "method.eval_every=0"], "no selection rounds"),
])
def test_bad_selection_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(DDError, match=message):
        run(config(*overrides, f"buffer.dir={tmp_path / 'buffer'}"), tmp_path / "run")


# --- selection on the held-out split ------------------------------------------------------------------


def scripted(scores: dict, calls: list, on_val: dict | None = None):
    """Stands in for evaluate_set: the mean is scores[(split, round)] (or on_val[lr] for the lr search), and
    each call is recorded as (split, round, lr)."""

    def evaluate_set(images, labels, data, model_cfg, eval_cfg, *, lr=None, seed=0, round=0, **_):
        split = "val" if data.val_x is not None and data.test_x is data.val_x else "test"
        lr = float(eval_cfg.lr if lr is None else lr)
        calls.append((split, round, lr))
        acc = on_val[lr] if on_val is not None and round > 6 else scores.get((split, round), 0.1)
        return EvalResult([acc], acc, 0.0, eval_cfg.epochs, lr, "convnet", 0.0)

    return evaluate_set


# the rounds of iterations 0, 2, 4 (and the final 6 or 4) are rounds 1, 3, 5 (, 7): the val split favours
# iteration 2, the test split iteration 4
SCORES = {("val", 3): 0.9, ("test", 5): 0.8, ("val", 1): 0.2, ("test", 1): 0.2}


@pytest.mark.parametrize("select, best, split", [("val", 2, "val"), ("test", 4, "test")])
def test_mtt_selection_rounds_score_on_the_chosen_split(tmp_path, monkeypatch, select, best, split):
    calls = []
    monkeypatch.setattr(rounds, "evaluate_set", scripted(SCORES, calls))
    results = run(config(*MTT, f"buffer.dir={tmp_path / 'buffer'}", "dataset.holdout_per_class=5",
                         f"method.select={select}"), tmp_path / "run")
    assert [c[:2] for c in calls] == [(split, r) for r in (1, 3, 5, 7)]  # every round on the chosen split
    ds = load(tmp_path / "run" / "distilled")
    assert ds.meta["best_iteration"] == best
    assert results["selection"] == {"split": split, "rounds": 4, "iteration": best,
                                    **({"holdout_per_class": 5} if split == "val" else {})}
    assert ("paper_max" in results) == (split == "test")  # a val pick is not the reference's statistic
    # the reported figure is round 0 on the test split (the real evaluator: a test-split accuracy)
    assert results["metric"]["per_run"] == ds.meta["evaluation"]["per_model"]


def test_dc_select_val_picks_the_set_and_the_lr_on_the_held_out_split(tmp_path, monkeypatch):
    import dd.image.methods.dc as dc

    calls = []
    fake = scripted({("val", 3): 0.9, ("test", 5): 0.8, ("val", 1): 0.2}, calls, on_val={0.001: 0.3, 0.05: 0.7, 0.2: 0.5})
    monkeypatch.setattr(rounds, "evaluate_set", fake)
    monkeypatch.setattr(dc, "evaluate_set", fake)
    results = run(config(*DC, "dataset.holdout_per_class=5", "method.select=val", "method.select_lrs=[0.001,0.05,0.2]"),
                  tmp_path / "run")
    # rounds of iterations 0, 2 and the final set (4) on val; the lrs on val (rounds 6, 7, 8); once on test
    assert calls == [("val", 1, 0.01), ("val", 3, 0.01), ("val", 5, 0.01),
                     ("val", 6, 0.001), ("val", 7, 0.05), ("val", 8, 0.2), ("test", 0, 0.05)]
    assert results["eval"]["lr"] == 0.05 and results["metric"]["mean"] == 0.1
    sel = results["selection"]
    assert (sel["split"], sel["iteration"], sel["rounds"], sel["holdout_per_class"], sel["lr"]) == ("val", 2, 3, 5, 0.05)
    assert [r["lr"] for r in sel["lrs"]] == [0.001, 0.05, 0.2] and sel["lrs"][1]["acc_mean"] == 0.7
    ds = load(tmp_path / "run" / "distilled")
    assert ds.meta["best_iteration"] == 2 and float(ds.lr) == pytest.approx(0.05)  # dd-eval trains at the picked lr


def test_dm_select_val_keeps_the_best_round_on_the_held_out_split(tmp_path, monkeypatch):
    import dd.image.methods.dm as dm

    calls = []
    fake = scripted({("val", 3): 0.9, ("test", 5): 0.8}, calls)
    monkeypatch.setattr(rounds, "evaluate_set", fake)
    monkeypatch.setattr(dm, "evaluate_set", fake)
    results = run(config(*DM, "dataset.holdout_per_class=5", "method.select=val"), tmp_path / "run")
    assert calls == [("val", 1, 0.01), ("val", 3, 0.01), ("val", 5, 0.01), ("test", 0, 0.01)]
    assert results["selection"] == {"split": "val", "rounds": 3, "iteration": 2, "holdout_per_class": 5}
    best, last = load(tmp_path / "run" / "distilled"), load(tmp_path / "run" / "distilled_last")
    assert best.meta["best_iteration"] == 2 and last.meta["iteration"] == 4
    assert not torch.equal(best.images, last.images) and best.lr is None


def test_runs_without_a_pick_record_selection_null(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(rounds, "evaluate_set", scripted({}, calls))
    assert run(config(*DM), tmp_path / "dm")["selection"] is None  # select=last: rounds only watch, on test
    assert {split for split, _, _ in calls} == {"test"}
    assert run(config("method=random", "dataset.holdout_per_class=5"), tmp_path / "random")["selection"] is None
