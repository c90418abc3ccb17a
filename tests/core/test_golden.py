"""Conformance with the reference trajectory-matching code (values in tests/data/reference/, see its README).

The reference code's own outer iteration and evaluation schedule were run on tiny float64 inputs; these
tests put the same inputs through ddlab's functions (the ones `distill` and the evaluator call) and
require the same numbers to 1e-10 relative.
"""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from dd.config import CONF_DIR
from dd.image.batched import ModelStack, train_stack
from dd.image.methods.mtt import MTTConfig, Segment, Synthetic, outer_iteration
from dd.image.train import accuracy, lr_schedule, set_loss, train_on_set
from dd.inner import budget
from dd.inner.engines import InnerConfig
from dd.models import FlatModel, build_model

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
SETTINGS = json.loads((REFERENCE / "golden.json").read_text())
RTOL = 1e-10


def close(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Relative error in the 2-norm."""
    ours, theirs = ours.detach().double().reshape(-1), theirs.double().reshape(-1)
    return float(torch.linalg.vector_norm(ours - theirs) / torch.linalg.vector_norm(theirs))


def golden_net() -> FlatModel:
    m = SETTINGS["model"]
    net = build_model(m["name"], m["channels"], m["num_classes"], tuple(m["image_size"]), width=m["width"],
                      depth=m["depth"], norm=m["norm"], act=m["act"], pool=m["pool"]).double()
    flat = FlatModel(net)
    assert flat.names == SETTINGS["parameter_order"]
    assert [list(s) for s in flat.shapes] == SETTINGS["parameter_shapes"]
    return flat


def golden_plan(g: dict, name: str, n: int, steps: int) -> list[tuple[torch.Tensor, int]]:
    if name == "full":
        return [(torch.arange(n), 0)] * steps
    rows = g["mini/plan"]
    assert rows.shape[0] == steps
    return [(row[row >= 0], 0) for row in rows]


@pytest.mark.parametrize("plan_name", ["full", "mini"])
@pytest.mark.parametrize("engine", ["unroll", "reverse", "higher", "auto", "auto-2-steps"])
def test_golden_mtt_iteration_equals_the_reference(engine, plan_name, monkeypatch):
    g = load_file(str(REFERENCE / "mtt_iteration.safetensors"))
    s = SETTINGS["mtt_iteration"]
    m = MTTConfig(lr_img=s["lr_img"], lr_lr=s["lr_lr"], momentum=s["momentum"])
    syn = Synthetic.create(g["images"], g["labels"], float(g["syn_lr"]), m)
    segment = Segment(expert=0, start_epoch=0, start=g["theta_start"], target=g["theta_target"])
    plan = golden_plan(g, plan_name, len(g["labels"]), s["syn_steps"])

    if engine == "auto-2-steps":  # a budget that holds two steps' graphs: six steps run as three segments
        monkeypatch.setattr(budget, "steps_that_fit", lambda *a, **k: 2)
    inner = InnerConfig(engine=engine.split("-")[0])
    res = outer_iteration(syn, golden_net(), segment, plan, dsa=None, inner=inner, min_lr=1e-12)

    p = f"{plan_name}/"
    errors = {
        "grand_loss": close(res.loss, g[p + "grand_loss"]),
        "images_grad": close(res.grads[0], g[p + "images_grad"]),
        "syn_lr_grad": close(res.lr_grad, g[p + "syn_lr_grad"]),
        "theta_final": close(res.theta, g[p + "theta_final"]),
        "images_after": close(syn.images, g[p + "images_after"]),
        "syn_lr_after": close(syn.syn_lr, g[p + "syn_lr_after"]),
    }
    assert max(errors.values()) < RTOL, errors


def test_golden_mini_plan_is_not_the_full_plan():
    """The two plans give different answers, so the minibatch test checks the plan is followed."""
    g = load_file(str(REFERENCE / "mtt_iteration.safetensors"))
    assert close(g["mini/images_grad"], g["full/images_grad"]) > 1e-3


def reference_schedule():
    s = SETTINGS["eval_schedule"]
    return s, lr_schedule(s["epochs"], "reference")


def test_golden_eval_schedule_equals_the_reference():
    g = load_file(str(REFERENCE / "eval_schedule.safetensors"))
    s, schedule = reference_schedule()
    net = golden_net()
    net.load_into(g["init"])
    train_on_set(net.module, g["images"], g["labels"], schedule=schedule, lr=s["lr"], batch_size=len(g["labels"]),
                 momentum=s["momentum"], weight_decay=s["weight_decay"], dsa=None, generator=torch.Generator())
    assert close(net.flatten(), g["final"]) < RTOL
    assert accuracy(net.module, g["test_x"], g["test_y"]) == pytest.approx(float(g["test_accuracy"]))


def test_golden_eval_schedule_batched_trainer_equals_the_reference():
    g = load_file(str(REFERENCE / "eval_schedule.safetensors"))
    s, schedule = reference_schedule()
    net = golden_net()
    net.load_into(g["init"])
    stack = ModelStack([net.module])
    train_stack(stack, g["images"], g["labels"], schedule=schedule, lr=s["lr"], batch_size=len(g["labels"]),
                momentum=s["momentum"], weight_decay=s["weight_decay"], dsa=None, generators=[torch.Generator()],
                loss_fn=set_loss)
    assert close(stack.flat(0), g["final"]) < RTOL


def test_golden_eval_schedule_is_not_the_step_schedule():
    """ddlab's default schedule (E epochs, no optimiser restart) lands elsewhere: the test can fail."""
    g = load_file(str(REFERENCE / "eval_schedule.safetensors"))
    s, _ = reference_schedule()
    net = golden_net()
    net.load_into(g["init"])
    train_on_set(net.module, g["images"], g["labels"], schedule=lr_schedule(s["epochs"], "step"), lr=s["lr"],
                 batch_size=len(g["labels"]), momentum=s["momentum"], weight_decay=s["weight_decay"], dsa=None,
                 generator=torch.Generator())
    assert close(net.flatten(), g["final"]) > 1e-6


def test_paper_eval_preset_uses_the_reference_schedule():
    paper = OmegaConf.load(CONF_DIR / "eval" / "paper.yaml")
    assert paper.schedule == "reference" and paper.epochs == 1000
    schedule = lr_schedule(paper.epochs, paper.schedule)
    assert (schedule.epochs, schedule.decay_after, schedule.restart) == (1001, 501, True)
