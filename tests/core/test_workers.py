"""Models trained side by side on the CPU's cores (dd.workers) are the models trained one at a time."""

import threading
import time

import pytest
import torch
from omegaconf import OmegaConf

from dd.errors import DDError
from dd.image.batched import faster_batched
from dd.image.evaluate import EvalConfig, evaluate_set
from dd.image.train import lr_schedule, new_model, train_on_set
from dd.models import build_model
from dd.models.factory import ModelConfig
from dd.workers import Stopped, check_workers, run_jobs, worker_count

MODEL = OmegaConf.structured(ModelConfig(name="convnet", width=8, norm="instance", act="relu", pool="avg"))


@pytest.fixture
def one_thread():
    """torch on one thread: then a model's ops run the same way on its own worker thread and here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_side_by_side_models_equal_one_at_a_time(digits_data, one_thread):
    digits = digits_data
    idx = torch.cat([digits.indices_of_class(c)[:5] for c in range(10)])
    images, labels = digits.train_x[idx], digits.train_y[idx]
    predict = [digits.test_x[:7]] * 3
    runs = {}
    for workers in (1, 2):
        cfg = OmegaConf.structured(EvalConfig(num_models=3, epochs=15, batched=False, workers=workers))
        runs[workers] = evaluate_set(images, labels, digits, MODEL, cfg, seed=4, progress=False, predict=predict)
    assert runs[1].mean > 0.3  # they learned something
    assert runs[2].per_model == runs[1].per_model  # the same models, not merely similar ones
    for a, b in zip(runs[2].predictions, runs[1].predictions):
        assert torch.equal(a, b)
    assert torch.get_num_threads() == 1  # the thread setting is restored after the side-by-side run


def test_run_jobs_returns_in_index_order_and_reports_each():
    def job(i, stop):
        time.sleep(0.02 * (4 - i))  # later jobs finish first
        return i * i

    seen = []
    assert run_jobs(job, 5, workers=3, on_done=lambda i, r: seen.append((i, r))) == [0, 1, 4, 9, 16]
    assert sorted(seen) == [(i, i * i) for i in range(5)]


def test_the_first_failure_stops_the_others_and_is_raised():
    started, saw_stop = set(), threading.Event()

    def job(i, stop):
        started.add(i)
        if i == 0:
            time.sleep(0.05)
            raise ValueError("job 0 failed")
        if stop.wait(timeout=10):  # a long job that checks the flag, as train_on_set does each epoch
            saw_stop.set()
            raise Stopped
        return i

    with pytest.raises(ValueError, match="job 0 failed"):
        run_jobs(job, 6, workers=2)
    assert saw_stop.is_set()
    assert started == {0, 1}  # the jobs still queued never started


def test_training_ends_when_the_stop_flag_is_set(digits_data):
    digits = digits_data
    model = new_model(MODEL, digits)
    before = [p.detach().clone() for p in model.parameters()]
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        train_on_set(model, digits.train_x[:10], digits.train_y[:10], schedule=lr_schedule(3), lr=0.01,
                     generator=torch.Generator().manual_seed(0), stop=stop)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_bad_worker_counts_are_refused(digits_data, bad):
    with pytest.raises(DDError, match=f"eval.workers={bad} is not allowed"):
        check_workers(bad)
    digits = digits_data
    cfg = OmegaConf.create({**OmegaConf.to_container(OmegaConf.structured(EvalConfig(num_models=1, epochs=1))),
                            "workers": bad})
    with pytest.raises(DDError, match="eval.workers"):
        evaluate_set(digits.train_x[:10], digits.train_y[:10], digits, MODEL, cfg, progress=False)


def test_worker_count():
    threads = torch.get_num_threads()
    assert worker_count(None, 100, "cpu") == threads  # auto: the cores torch would use
    assert worker_count(None, 1, "cpu") == 1  # never more than there are models
    assert worker_count(4, 3, "cpu") == 3
    assert worker_count(4, 10, "cuda") == 1  # a GPU batches instead (eval.batched)


def test_auto_batching_on_cpu_only_for_tiny_steps(digits_data):
    digits = digits_data
    small = new_model(MODEL, digits)  # width 8 on 16x16: well under a MFLOP per image
    assert faster_batched(small, (1, 16, 16), 10, "cpu")
    cifar = build_model("convnet", 3, 10, (32, 32), width=128)
    assert not faster_batched(cifar, (3, 32, 32), 10, "cpu")  # ~100 MFLOP per image
    assert faster_batched(cifar, (3, 32, 32), 10, "cuda")  # a GPU always batches
