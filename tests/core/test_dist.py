"""Several processes, one job (dd.dist, gloo on the CPU): the numbers of one process.

The tests compare what every rank of a real job of 2 or 3 processes (tests/ranks.py, torchrun's environment)
computed with the reference code's values (tests/data/reference) and with one process. Starting a process
costs more than the work asked of it, so one job of 2 processes (the `two_ranks` fixture) does the work of
every 2-process test, each part's outcome or refusal kept for its test.
"""

from pathlib import Path

import pytest
import torch
from ranks import run_ranks
from safetensors.torch import load_file
from test_golden import REFERENCE, RTOL, SETTINGS, close, golden_net, golden_plan

from dd import dist
from dd.data import DSA
from dd.errors import DDError
from dd.image.methods.mtt import MTTConfig, Segment, Synthetic, check_world, outer_iteration
from dd.inner import budget
from dd.inner.engines import InnerConfig

ENGINES = ["unroll", "reverse", "auto", "auto-2-steps", "tesla", "higher"]
FIELDS = ("loss", "images_grad", "syn_lr_grad", "theta", "images_after", "syn_lr_after")


def iteration(engine: str, plan_name: str, dsa_seed: int | None = None, soft: bool = False) -> dict:
    """One MTT outer iteration on the reference's tiny float64 inputs; what it computed and what it changed."""
    g = load_file(str(REFERENCE / "mtt_iteration.safetensors"))
    s = SETTINGS["mtt_iteration"]
    m = MTTConfig(lr_img=s["lr_img"], lr_lr=s["lr_lr"], momentum=s["momentum"], lr_label=0.5)
    logits = None
    if soft:  # DATM's learned soft labels: a second learnable the ranks share out
        logits = torch.randn(len(g["labels"]), 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    syn = Synthetic.create(g["images"], g["labels"], float(g["syn_lr"]), m, label_logits=logits)
    segment = Segment(expert=0, start_epoch=0, start=g["theta_start"], target=g["theta_target"])
    plan = golden_plan(g, plan_name, len(g["labels"]), s["syn_steps"])
    if dsa_seed is not None:
        plan = [(idx, dsa_seed + i) for i, (idx, _) in enumerate(plan)]
    real_fit = budget.steps_that_fit
    if engine == "auto-2-steps":  # six steps as three segments
        budget.steps_that_fit = lambda *a, **k: 2
    try:
        res = outer_iteration(syn, golden_net(), segment, plan, dsa=None if dsa_seed is None else DSA(),
                              inner=InnerConfig(engine=engine.split("-")[0]), min_lr=1e-12)
    finally:
        budget.steps_that_fit = real_fit
    out = {"loss": res.loss, "images_grad": res.grads[0], "syn_lr_grad": res.lr_grad, "theta": res.theta,
           "images_after": syn.images.detach(), "syn_lr_after": syn.syn_lr.detach(), "world": dist.world()}
    if soft:
        out["labels_grad"] = res.grads[1]
    return out


def iterations(cases: list[tuple]) -> list[dict]:
    return [iteration(*case) for case in cases]


ENGINE_CASES = [(engine, plan) for engine in ENGINES for plan in ("full", "mini")]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One job of 2 processes: the rank-by-rank outcomes of two_rank_job."""
    return run_ranks(two_rank_job, 2, str(tmp_path_factory.mktemp("job")))


def two_rank_job(out: str) -> dict:
    """What the 2-process tests ask of a job, in one: the engines' iterations, the step-size check (its refusal
    kept as text) and the whole runs of each method (into out/<method>)."""
    done = {"iterations": iterations(ENGINE_CASES), "small_steps": small_steps(20, 6)}
    try:
        small_steps(21, 10)
        done["small_steps_refused"] = None
    except DDError as e:
        done["small_steps_refused"] = str(e)
    for method in DISTILLED:
        done[method] = distill_run(job_overrides(method, f"{out}/buffer_{method}"), f"{out}/{method}")
    done["out"] = out
    return done


def test_two_ranks_give_the_reference_meta_gradient_with_every_engine(two_ranks):
    cases = ENGINE_CASES
    ranked = [rank["iterations"] for rank in two_ranks]
    g = load_file(str(REFERENCE / "mtt_iteration.safetensors"))
    for k, (engine, plan) in enumerate(cases):
        a, b = ranked[0][k], ranked[1][k]
        assert a["world"] == b["world"] == 2
        for name in FIELDS:
            assert torch.equal(a[name], b[name]), (engine, plan, name)  # both ranks hold the same result
        one = iteration(engine, plan)  # the same iteration in one process
        errors = {name: close(a[name], one[name]) for name in FIELDS}
        assert max(errors.values()) < RTOL, (engine, plan, errors)
        if engine != "tesla":  # TESLA is an approximation: the reference's exact values are not its target
            p = f"{plan}/"
            ref = {"loss": close(a["loss"], g[p + "grand_loss"]), "images_grad": close(a["images_grad"], g[p + "images_grad"]),
                   "syn_lr_grad": close(a["syn_lr_grad"], g[p + "syn_lr_grad"]),
                   "images_after": close(a["images_after"], g[p + "images_after"])}
            assert max(ref.values()) < RTOL, (engine, plan, ref)


def test_three_ranks_uneven_shares_with_dsa_and_soft_labels_equal_one_process():
    """20 images over 3 ranks (7/7/6), the mini plan's steps of 6-8 images (2-3 each); every image augmented
    as in the whole batch (DSA's seeded draws), learned soft labels."""
    cases = [("reverse", "full", 11, True), ("unroll", "mini", 5, True), ("auto-2-steps", "full", 7, False)]
    ranked = run_ranks(iterations, 3, cases)
    for k, case in enumerate(cases):
        one = iteration(*case)
        for r in range(3):
            errors = {name: close(ranked[r][k][name], one[name]) for name in (*FIELDS, "labels_grad")
                      if name in one}
            assert max(errors.values()) < RTOL, (case, r, errors)
    # the augmentation mattered: without it the meta-gradient is another one
    assert close(iteration("reverse", "full", None, True)["images_grad"], iteration(*cases[0])["images_grad"]) > 1e-3


def test_dsa_share_of_a_batch_is_augmented_as_in_the_whole_batch():
    x = torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    dsa = DSA(mode="all")
    whole = dsa(x, seed=42)
    rows = slice(3, 7)
    assert torch.equal(dsa(x[rows], seed=42, rows=rows, batch=10), whole[rows])
    assert not torch.equal(dsa(x[rows], seed=42), whole[rows])  # the share alone draws other parameters


def test_shares_cover_the_batch_once():
    for n in (1, 5, 6, 7, 20):
        for w in (1, 2, 3, 4):
            parts = [dist.share(n, r, w) for r in range(w)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) - min(sizes) <= 1


def small_steps(n, batch_syn):
    check_world(n, batch_syn, torch.nn.Linear(1, 1))
    return "ok"


def test_a_step_smaller_than_the_world_is_refused_on_every_rank(two_ranks):
    assert [rank["small_steps"] for rank in two_ranks] == ["ok", "ok"]  # steps of 6 and the remainder 2
    for rank in two_ranks:  # a remainder of 1 image
        assert "fewer than the 2 processes" in rank["small_steps_refused"]
    with pytest.raises(DDError, match="batchnorm"):
        check_world_with_batchnorm()


def check_world_with_batchnorm():
    import os

    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE")}
    os.environ.update(RANK="0", WORLD_SIZE="2")  # what torchrun sets; no collective is needed to refuse
    try:
        check_world(20, None, torch.nn.BatchNorm2d(3))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- whole runs: a job of 2 processes against one process ----------------------------------------------

RUN = ["dataset=digits", "ipc=1", "model.width=6", "eval.epochs=4", "eval.num_models=3", "progress=false",
       "logger=none"]
METHODS = {
    "dc": ["method=dc", "method.iterations=3", "method.batch_real=16", "method.eval_every=2"],
    "dsa": ["method=dsa", "method.iterations=3", "method.batch_real=16", "method.eval_every=0"],
    "dm": ["method=dm", "method.iterations=4", "method.batch_real=16", "method.eval_every=0"],
    "mtt": ["method=mtt", "buffer.num_experts=3", "buffer.epochs=3", "method.max_start_epoch=2",
            "method.expert_epochs=1", "method.syn_steps=3", "method.batch_syn=5", "method.iterations=4",
            "method.eval_every=2", "method.checkpoint_every=2", "method.lr_img=100"],
}


DISTILLED = ["dc", "dm", "mtt"]  # dsa is dc's class sharing with augmentation


def job_overrides(method: str, buffer: str) -> list[str]:
    return [*RUN, *METHODS[method], f"buffer.dir={buffer}"]


def distill_run(overrides: list[str], out: str) -> dict:
    """dd.pipeline.run as dd-distill calls it: what it returned, and (rank 0) the exported images."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from dd.config import CONF_DIR, register_configs
    from dd.export import load
    from dd.pipeline import run

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    dist.barrier()
    results = run(cfg, out)
    dist.barrier()  # rank 0 has written everything
    images = load(Path(out) / "distilled").images if dist.is_main() else None
    return {"results": results, "images": images, "rank": dist.rank()}


@pytest.mark.parametrize("method", DISTILLED)
def test_two_processes_distill_what_one_does(method, tmp_path, two_ranks):
    one = distill_run(job_overrides(method, str(tmp_path / "buffer")), str(tmp_path / "one"))
    # the job built its own experts, shared out over the ranks, into a fresh folder
    a, b = (rank[method] for rank in two_ranks)
    job_dir = Path(two_ranks[0]["out"]) / method
    # every rank evaluated the same models: the per-model numbers of one process (models dealt to ranks)
    assert a["results"]["metric"]["per_run"] == b["results"]["metric"]["per_run"]
    assert a["results"]["metric"]["per_run"] == pytest.approx(one["results"]["metric"]["per_run"], abs=1e-6)
    assert a["results"]["device"]["world_size"] == 2
    # DC/DM: a class's gradient is made on one rank, so the images are the same bit for bit; MTT sums each
    # step's gradient over ranks in another order (float32): the same to rounding
    if method == "mtt":
        assert close(a["images"], one["images"]) < 1e-5
    else:
        assert torch.equal(a["images"], one["images"])
    assert b["images"] is None and (job_dir / "results.json").is_file()
    if method == "mtt":
        from dd.image.experts import Buffer

        records = Buffer.open(Path(two_ranks[0]["out"]) / "buffer_mtt").records()
        assert sorted(r["id"] for r in records) == [0, 1, 2]
        assert sorted(r["rank"] for r in records) == [0, 0, 1]  # dealt round-robin: 0 and 2 to rank 0


def test_auto_device_under_torchrun_is_the_local_rank_gpu(monkeypatch):
    from dd.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:3") == torch.device("cuda", 3)  # a named GPU is taken as named
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert resolve_device("auto") == torch.device("cuda")


def test_srun_tasks_are_ranks_and_find_their_rendezvous(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "-")  # so that teardown restores what was there before, set or not
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[12-13,20],cpu7")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    assert dist.launched() == (3, 4, 1)
    dist._slurm_rendezvous()
    import os

    assert os.environ["MASTER_ADDR"] == "gpu12" and os.environ["MASTER_PORT"] == str(20000 + 123456 % 20000)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # a batch script, or one task: one process
    assert dist.launched() == (0, 1, 0)
