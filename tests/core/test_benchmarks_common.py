"""benchmarks/common.py: the helpers every benchmark script shares; and inner_step.py on a tiny problem."""

import argparse
import json
from pathlib import Path

import pytest

from benchmarks import common


def test_int_list_keeps_order_and_drops_duplicates():
    assert common.int_list("5,20,5,100") == [5, 20, 100]
    for bad in ("", "a,b", "0", "3,-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            common.int_list(bad)


def test_shape_needs_three_positive_integers():
    assert common.shape("3,32,32") == (3, 32, 32)
    for bad in ("1,2", "1,2,3,4", "0,8,8", "x,8,8"):
        with pytest.raises(argparse.ArgumentTypeError):
            common.shape(bad)


def test_choice_list_names_the_unknown_value():
    parse = common.choice_list(("unroll", "reverse"))
    assert parse("reverse,unroll,reverse") == ["reverse", "unroll"]
    with pytest.raises(argparse.ArgumentTypeError, match="foo"):
        parse("unroll,foo")


def test_render_table_aligns_left_then_right():
    text = common.render_table("T", ["a", "bb", "c"], [["xyz", "1", "22"]], ["note"], left=1)
    # widths 3, 2, 2; column 0 left-aligned, the others right-aligned
    assert text == "T\na   | bb |  c\n----+----+---\nxyz |  1 | 22\nnote"


def test_error_rows_say_what_failed():
    assert common.record_error({}, common.Timeout("timeout: over 5 s")) == {
        "error": "timeout: over 5 s", "error_kind": "timeout"}
    assert common.record_error({}, MemoryError("no room"))["error_kind"] == "oom"
    assert common.record_error({}, RuntimeError("CUDA out of memory. Tried"))["error_kind"] == "oom"
    row = common.record_error({"k": 2}, ValueError("bad\nsecond line"))
    assert row == {"k": 2, "error": "ValueError: bad", "error_kind": "error"}
    assert common.error_cell(row) == "error" and common.error_cell({"error_kind": "oom"}) == "OOM"
    assert not common.ok(row) and common.ok({"seconds": 1.0}) and common.ok({"s_per_iter": 0.5}, "s_per_iter")


def test_measure_or_error_returns_the_base_row_on_failure():
    def fails(x):
        raise MemoryError(f"too big: {x}")

    assert common.measure_or_error("cpu", {"e": 4}, lambda x: {"e": x, "seconds": 1.0}, 4) == {"e": 4, "seconds": 1.0}
    assert common.measure_or_error("cpu", {"e": 4}, fails, 4) == {
        "e": 4, "error": "out of memory: MemoryError: too big: 4", "error_kind": "oom"}


def test_options_and_default_paths():
    args = argparse.Namespace(ipc=1, depth=None, device="cpu", quick=True, json=None, plot=None)
    common.require_positive(args, ("ipc",), ("depth",))
    common.output_paths(args, "experts")
    assert args.json == common.RESULTS / "experts_cpu_quick.json"
    assert args.plot == common.RESULTS / "experts_cpu_quick.png"
    args = argparse.Namespace(ipc=0, depth=None, device="cuda", quick=False, json=Path("/tmp/r.json"), plot=None)
    with pytest.raises(SystemExit, match="--ipc=0"):
        common.require_positive(args, ("ipc",))
    common.output_paths(args, "evaluate")
    assert args.json == Path("/tmp/r.json") and args.plot == Path("/tmp/r.png")


def test_convnet_depth_is_the_auto_depth_unless_given():
    # 32x32 -> three conv/pool blocks (32, 16, 8, 4); 16x16 -> two; an explicit depth wins
    assert common.convnet_depth(argparse.Namespace(depth=None, shape=(3, 32, 32))) == 3
    assert common.convnet_depth(argparse.Namespace(depth=None, shape=(1, 16, 16))) == 2
    assert common.convnet_depth(argparse.Namespace(depth=1, shape=(3, 32, 32))) == 1


def test_inner_step_compares_equal_gradients(tmp_path):
    """The reference-pattern variant must compute ddlab's meta-gradient, or the timing compares unequal work."""
    from benchmarks import inner_step

    out = tmp_path / "is.json"
    assert inner_step.main(["--shape", "1,8,8", "--width", "4", "--ipc", "2", "--classes", "3", "--steps", "2",
                            "--repeats", "1", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["meta"]["grad_max_abs_diff"] < 1e-9
    assert [r["variant"] for r in saved["rows"]] == ["ddlab", "reference"]
    assert all(r["s_per_step"] > 0 for r in saved["rows"])


def test_evaluate_benchmark_times_three_modes_on_digits(tmp_path):
    """Every mode trains the same models: accuracies agree with sequential's, and each gets a speed-up."""
    from benchmarks import evaluate

    out = tmp_path / "ev.json"
    assert evaluate.main(["--data", "digits", "--width", "4", "--ipc", "2", "--k", "2", "--epochs", "2",
                          "--no-warmup", "--json", str(out)]) == 0
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"batched", "parallel", "sequential"}
    assert rows["sequential"]["workers"] == 1 and rows["batched"]["workers"] is None
    assert rows["sequential"]["test_size"] == 297 and rows["sequential"]["shape"] == [1, 16, 16]
    for mode in ("batched", "parallel"):
        assert rows[mode]["acc_agree"] and rows[mode]["speedup"] > 0
    assert "speedup" not in rows["sequential"]
