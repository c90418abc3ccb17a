"""benchmarks/gpu_check.py (`make gpu-check`): its refusal without CUDA, and a cheap dry run on the CPU."""

import json

import torch

from benchmarks import gpu_check


def test_without_cuda_it_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # holds on a GPU machine too
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--device", "cuda", "--json", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: CUDA is not available on this machine (torch ")
    assert "--device cpu" in lines[0]
    assert captured.out == ""
    assert not out.exists()


def test_cpu_dry_run_of_golden_prints_the_table_and_writes_passing_rows(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--sections", "golden,tests", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "section" in table and "status" in table and "total time:" in table
    rows = json.loads(out.read_text())["rows"]
    golden = [r for r in rows if r["section"] == "golden"]
    assert len(golden) == len(gpu_check.golden_variants()) and all(r["status"] == "pass" for r in golden)
    assert max(max(r["vs_cpu"].values()) for r in golden) == 0.0  # CPU against CPU
    assert max(r["vs_golden"]["cpu"] for r in golden if not r["check"].startswith("tesla")) < 1e-10
    (tests,) = [r for r in rows if r["section"] == "tests"]
    assert tests["status"] == "skipped"  # the one section a CPU cannot run
    assert all(r["status"] in ("pass", "skipped") for r in rows)


def test_a_crashing_section_is_a_failed_row_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    def crash(args, out):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setitem(gpu_check.RUNNERS, "golden", crash)
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--sections", "golden,tests", "--json", str(out)]) == 1
    rows = json.loads(out.read_text())["rows"]
    assert [(r["section"], r["status"]) for r in rows] == [("golden", "FAIL"), ("tests", "skipped")]
    assert rows[0]["figure"] == "crashed: RuntimeError: boom"
    assert "FAIL" in capsys.readouterr().out


def test_pytest_counts_reads_the_summary_line():
    text = "....F\n=== 1 failed, 4 passed, 2 skipped, 380 deselected, 1 error in 12.3s ==="
    assert gpu_check.pytest_counts(text) == {"failed": 1, "passed": 4, "skipped": 2, "deselected": 380, "error": 1}
    assert gpu_check.pytest_counts("no tests ran") == {}


def test_presets_compare_with_the_cpu_file_only_at_the_same_budget(tmp_path):
    cpu_args = gpu_check.build_parser().parse_args(["--device", "cpu"])
    gpu_args = gpu_check.build_parser().parse_args(["--device", "cuda"])

    def record(acc, overrides=gpu_check.PRESETS["dm"][1], device="cpu"):  # what run_preset returns
        return {"preset": "dm", "overrides": list(overrides), "accuracy": acc, "total_s": 12.0, "wall_s": 15.0,
                "device": {"device": device}, "exported": True}

    cpu_rows = gpu_check.preset_rows(cpu_args, "dm", record(0.80), None)  # the CPU file, before there is one
    assert [r["status"] for r in cpu_rows] == ["pass", "info"]
    path = tmp_path / "gpu_check_cpu.json"
    path.write_text(json.dumps({"meta": {}, "rows": cpu_rows}))
    cpu = gpu_check.cpu_reference(path)["dm"]
    assert cpu["accuracy"] == 0.80

    def statuses(r, reference):
        return [row["status"] for row in gpu_check.preset_rows(gpu_args, "dm", r, reference)]

    assert statuses(record(0.85, device="cuda:0"), cpu) == ["pass", "pass"]
    assert statuses(record(0.70, device="cuda:0"), cpu) == ["pass", "FAIL"]  # 10 points off
    assert statuses(record(0.80, device="cpu"), cpu) == ["FAIL", "pass"]  # ran on the wrong device
    assert statuses(record(0.80, ["other"], device="cuda:0"), cpu) == ["pass", "FAIL"]  # another budget
    assert statuses(record(0.80, device="cuda:0"), None) == ["pass", "FAIL"]  # no CPU figure: cannot be checked
    assert statuses({"preset": "dm", "error": "exit 1: boom"}, cpu) == ["FAIL"]
