"""The digits second-opinion evaluator (experiments/digits/independent_eval.py) reads ddlab's exports."""

import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from dd.export import image_set

SCRIPT = Path(__file__).parents[2] / "experiments" / "digits" / "independent_eval.py"


def load_script():
    spec = importlib.util.spec_from_file_location("independent_eval", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_independent_test_split_is_ddlabs_test_split(digits_data, digits_zca_data, tmp_path):
    """Rebuilt from scikit-learn without ddlab, in the set's recorded space (normalised, or whitened)."""
    script = load_script()
    for data in (digits_data, digits_zca_data):
        idx = torch.cat([data.indices_of_class(c)[:1] for c in range(10)])
        ds = image_set(data.train_x[idx], data.train_y[idx], data, method="random", ipc=1,
                       model={"name": "convnet", "width": 8}, config={})
        path = ds.save(tmp_path / f"set_zca{data.zca is not None}")
        meta = json.loads((path / "meta.json").read_text())
        x, y = script.digits_test_split(meta, load_file(str(path / "data.safetensors")))
        assert torch.equal(y, data.test_y)
        assert torch.allclose(x, data.test_x, atol=1e-4)


def test_independent_evaluator_trains_and_reports(digits_data, tmp_path):
    script = load_script()
    idx = torch.cat([digits_data.indices_of_class(c)[:5] for c in range(10)])
    ds = image_set(digits_data.train_x[idx], digits_data.train_y[idx], digits_data, lr=torch.tensor(0.01),
                   method="random", ipc=5, model={"name": "convnet", "width": 8}, config={})
    path = ds.save(tmp_path / "set")
    out = tmp_path / "result.json"
    assert script.main([str(path), "--models", "2", "--epochs", "20", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["per_model"]) == 2 and result["epochs"] == 21 and abs(result["lr"] - 0.01) < 1e-8
    assert result["mean"] > 0.3  # 50 real digits teach a ConvNet far more than chance (0.1)
