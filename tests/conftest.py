"""What the tests share.

Layout: tests/core (the run skeleton, configs, CLIs, tables, export, processes), tests/image, tests/text and
tests/lm (one kind each); helpers importable from every test (this folder is on sys.path): conftest (below),
fake_cuda.py (code run "on CUDA" on a CPU), ranks.py (a job of several processes); data/ holds fixtures.

Here: a private cache for the whole run (DD_CACHE, HF_HOME: nothing is read from or left in ~/.cache),
a quiet wandb, the CPU as the default device; one tiny composed config per kind (`image_cfg`, `text_cfg`,
`lm_cfg`: the test adds only its own overrides); ONE way to run a dd-* command as a user does (`run_cli`);
and what several tests need built once per run (the digits dataset, a small expert buffer, a small teacher).

Tests use tiny models, for which one intra-op thread is fastest; with two threads torch
spin-waits and a busy 2-core machine runs them many times slower.
"""

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
# Tests mean the CPU unless they say otherwise (tests/fake_cuda.py runs code "on CUDA"); on a GPU machine
# `device=auto` would otherwise pick CUDA for every composed config and every CLI subprocess.
os.environ["DD_DEVICE"] = "cpu"
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A fresh cache for this run, as on a fresh clone: buffers, teachers, LM scores (DD_CACHE) and Hugging Face
# files (HF_HOME) are neither read from nor written to the user's ~/.cache; removed when the run ends.
CACHE = Path(tempfile.mkdtemp(prefix="dd-tests-cache-"))
atexit.register(shutil.rmtree, CACHE, ignore_errors=True)
os.environ["DD_CACHE"] = str(CACHE)
os.environ["HF_HOME"] = str(CACHE / "huggingface")
os.environ.pop("DD_DATA", None)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"  # fixtures on disk (reference values, a small text corpus)
REPO = TESTS.parent

# --- one tiny config per kind -------------------------------------------------------------------------------

QUIET = ["progress=false", "logger=none"]
IMAGE = ["dataset=digits", "ipc=1", "model.width=6", "eval.epochs=2", "eval.num_models=1", *QUIET]
TEXT = ["dataset=synthetic_topics", "model=tiny_bert", "ipc=1", "dataset.num_train=48", "dataset.num_test=32",
        "dataset.max_length=8", "eval.num_models=1", *QUIET]
LM = ["dataset=lm_files", "model=gpt2_tiny", "model.n_layer=1", "model.n_embd=32", "model.context=32",
      "model.vocab_size=300", "prune.tokens=6000", "prune.probe_tokens=6000", "prune.batch_size=8",
      "dataset.domain_column=domain", *QUIET]


def compose(*overrides: str):
    """dd.config.compose(overrides), remembered: a test gets its own copy of the config a first composition made
    (Hydra takes a quarter of a second per composition; many tests compose the same run)."""
    import copy

    return copy.deepcopy(_composed(tuple(str(o) for o in overrides)))


@functools.cache
def _composed(overrides: tuple[str, ...]):
    from dd.config import compose as dd_compose

    return dd_compose(list(overrides))


def image_cfg(*overrides: str):
    """The run config `dd-distill` composes for a tiny digits run (width-6 ConvNet, 1 image per class, a
    2-epoch evaluation of 1 model, no progress bars or logger), with the test's own overrides last."""
    return compose(*IMAGE, *overrides)


def text_cfg(*overrides: str):
    """A tiny text run: the seeded synthetic topics (48 train, 32 test texts of 8 tokens), a 2-layer tiny BERT."""
    return compose(*TEXT, *overrides)


def lm_cfg(*overrides: str):
    """A tiny language-model pruning run on local files (dataset.train_file is the test's): a 1-layer GPT-2."""
    return compose(*LM, *overrides)


# --- the dd-* commands as a user runs them ------------------------------------------------------------------

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]


def entry_points() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def cli_command(prog: str) -> list[str]:
    """The installed console script `prog` (dd-distill, ...); where it is not installed (a newer command than the
    environment), its entry point run by this Python."""
    exe = Path(sys.executable).parent / prog
    if exe.is_file():
        return [str(exe)]
    module, fn = entry_points()[prog].split(":")
    return [sys.executable, "-c", f"import sys; sys.argv[0] = {prog!r}; from {module} import {fn}; sys.exit({fn}())"]


def cli_env(**extra: str | None) -> dict[str, str]:
    """The environment a command runs in: this run's private cache, no wandb, the CPU, one thread, and the dd
    package this test session imported (a copy of the repository tests its own code); None removes a variable."""
    import dd

    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", DD_DEVICE="cpu", HYDRA_FULL_ERROR="0",
               DD_CACHE=str(CACHE), HF_HOME=str(CACHE / "huggingface"))
    env.pop("DD_DATA", None)
    root = str(Path(dd.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def run_cli(prog: str, *args, cwd=None, env: dict | None = None, nproc: int | None = None,
            timeout: float = 600, in_process: bool = False) -> subprocess.CompletedProcess:
    """Run `prog args...` as a user would (a real process; `nproc`: under torchrun with that many processes)
    and hand back the finished process (text stdout/stderr). `env` adds to (None: removes from) cli_env().

    in_process=True: the command's entry point called in this process (its stdout, stderr and exit status
    captured the same way), for the many refusals that end before any work: a fresh process costs seconds of
    imports. What only a fresh process shows (import-time output, one line on stderr from start to end) is
    checked by at least one real refusal of every command."""
    if in_process:
        assert cwd is None and nproc is None, "in_process runs here, in this folder, in one process"
        return _run_here(prog, [str(a) for a in args], env or {})
    cmd = [*cli_command(prog), *map(str, args)]
    if nproc:  # torchrun starts a Python script (the console script) or a module
        script = cmd[:1] if cmd[0] != sys.executable else ["-m", entry_points()[prog].split(":")[0]]
        cmd = [*TORCHRUN, str(nproc), *script, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(**(env or {})), cwd=cwd, timeout=timeout)


def _run_here(prog: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    import contextlib
    import importlib
    import io
    import logging
    import warnings

    from hydra.core.global_hydra import GlobalHydra

    module, fn = entry_points()[prog].split(":")
    main = getattr(importlib.import_module(module), fn)
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level, saved_argv, saved_env = root.handlers[:], root.level, sys.argv, dict(os.environ)
    code = 0
    try:
        sys.argv = [prog, *args]
        fresh = cli_env(**env)  # the environment the command's process would get
        os.environ.clear()
        os.environ.update(fresh)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # warnings print to (the captured) stderr under a fresh interpreter's filters, as in a real process
            warnings.resetwarnings()
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.filterwarnings("ignore", category=category)
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
                warnings.formatwarning(message, category, filename, lineno, line))
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        for h in root.handlers[:]:  # what Hydra's job logging added
            if h not in saved_handlers:
                root.removeHandler(h)
                h.close()
        for h in saved_handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(saved_level)
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess([prog, *args], code, out.getvalue(), err.getvalue())


def pytest_collection_modifyitems(config, items):
    """`cuda` tests need a real GPU: skipped without one, unless DD_REQUIRE_CUDA=1 (make gpu-check), where a
    missing GPU fails them instead."""
    if torch.cuda.is_available() or os.environ.get("DD_REQUIRE_CUDA") == "1":
        return
    skip = pytest.mark.skip(reason="needs a GPU (make gpu-check runs these on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits_data():
    from dd.data import load_image_dataset

    return load_image_dataset("digits")


@pytest.fixture(scope="session")
def digits_zca_data():
    from dd.data import load_image_dataset

    return load_image_dataset("digits", zca=True, zca_eps=0.1)


def dies_at_call(fn, n: int):
    """`fn`, except that its n-th call raises KeyboardInterrupt (a kill mid-run, for resume tests)."""
    calls = {"n": 0}

    def wrapped(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return fn(*a, **k)

    return wrapped


@pytest.fixture
def fake_cuda():
    """A CUDA device that lives on the CPU: device mixes raise, host syncs are counted (tests/fake_cuda.py)."""
    from fake_cuda import FakeCuda

    with FakeCuda() as harness:
        yield harness


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (tiny matrices: faster, and immune to a busy machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
