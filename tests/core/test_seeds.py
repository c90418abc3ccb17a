"""Random streams by purpose: evaluation models never start where experts started."""

import itertools
import json

import pytest
import torch
from hydra import compose, initialize_config_dir

import dd.image.evaluate as evaluate
from dd import seeds
from dd.config import CONF_DIR, register_configs
from dd.errors import DDError
from dd.image.experts import build_buffer
from dd.image.kind import load_data
from dd.models import FlatModel

register_configs()


def tiny_config(tmp_path, *extra):
    overrides = ["method=mtt", "dataset=digits", "model.width=4", "buffer.epochs=1", "eval.epochs=1",
                 "eval.num_models=3", "progress=false", f"buffer.dir={tmp_path / 'buffer'}", *extra]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_streams_of_different_purposes_never_coincide():
    purposes = ["expert_init", "expert_data", "eval_init", "eval_data", "distill", "coreset_features"]
    drawn = [seeds.derive(p, s, *idx) for p in purposes for s in range(4) for idx in ((0,), (1,), (2,), (0, 1), (1, 0))]
    assert len(set(drawn)) == len(drawn)
    assert all(0 <= d < 2**63 for d in drawn)
    assert seeds.derive("eval_init", 3, 1, 2) == seeds.derive("eval_init", 3, 1, 2)  # a pure function


def test_no_evaluation_model_starts_where_an_expert_started(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    data = load_data(cfg)
    expert_inits = []
    for buffer_seed in (0, 1):
        bcfg = tiny_config(tmp_path / f"b{buffer_seed}", f"buffer.seed={buffer_seed}")
        buffer = build_buffer(bcfg, data, "cpu", ids=[0, 1, 2], progress=False)
        expert_inits += [buffer.epochs(e, 0)[0] for e in range(3)]

    eval_inits = []
    real_fresh = evaluate.fresh_model

    def recording(*args, **kwargs):
        model = real_fresh(*args, **kwargs)
        eval_inits.append(FlatModel(model).flatten())
        return model

    monkeypatch.setattr(evaluate, "fresh_model", recording)
    idx = torch.cat([data.indices_of_class(c)[:1] for c in range(10)])
    for seed, round_ in itertools.product((0, 1, 2), (0, 1, 101)):
        evaluate.evaluate_set(data.train_x[idx], data.train_y[idx], data, cfg.model, cfg.eval, seed=seed,
                              round=round_, progress=False)
    assert len(eval_inits) == 3 * 3 * 3 and len(expert_inits) == 6
    for e in expert_inits:
        assert all(not torch.equal(e, m) for m in eval_inits)
    # and the K models of all those rounds are distinct draws, not replays of each other
    assert len({tuple(m[:8].tolist()) for m in eval_inits}) == len(eval_inits)


def test_buffer_of_the_old_seeding_scheme_is_refused(tmp_path):
    cfg = tiny_config(tmp_path)
    data = load_data(cfg)
    buffer = build_buffer(cfg, data, "cpu", ids=[0], progress=False)
    manifest = json.loads((buffer.folder / "manifest.json").read_text())
    assert manifest["seeding"] == {"scheme": seeds.SCHEME, "seed": 0}
    del manifest["seeding"]  # what a buffer of the old scheme looks like
    (buffer.folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DDError, match="older seeding scheme"):
        build_buffer(cfg, data, "cpu", ids=[0], progress=False)


def test_selection_rounds_and_final_evaluation_use_different_models(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    data = load_data(cfg)
    idx = torch.cat([data.indices_of_class(c)[:1] for c in range(10)])
    inits = {}
    real_fresh = evaluate.fresh_model
    for round_ in (0, 1):
        got = []
        monkeypatch.setattr(evaluate, "fresh_model",
                            lambda *a, got=got, **k: got.append(real_fresh(*a, **k)) or got[-1])
        evaluate.evaluate_set(data.train_x[idx], data.train_y[idx], data, cfg.model, cfg.eval, round=round_,
                              progress=False)
        inits[round_] = [FlatModel(m).flatten() for m in got]
    assert not any(torch.equal(a, b) for a in inits[0] for b in inits[1])
