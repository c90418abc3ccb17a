"""dd-table: pooled statistics per cell, blank missing cells, three formats, published figures."""

import csv
import io
import json

import numpy as np
import pytest

from dd.cli.table import main as table_main
from dd.errors import DDError
from dd.table import collect, find_results, load_reference, plot, render

# (folder, method, dataset, ipc, seed, per-model accuracies)
RUNS = [
    ("sweep/0", "random", "digits", 1, 0, [0.30, 0.34, 0.29]),
    ("sweep/1", "random", "digits", 1, 1, [0.41, 0.37, 0.40]),
    ("sweep/2", "random", "digits", 10, 0, [0.81, 0.85, 0.80]),
    ("other/run", "herding", "digits", 1, 0, [0.52, 0.55, 0.49]),
    # herding digits ipc10 is missing on purpose
]


def write_runs(root):
    for folder, method, dataset, ipc, seed, accs in RUNS:
        d = root / folder
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({
            "accuracy": {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "per_model": accs},
            "method": method, "dataset": dataset, "ipc": ipc, "model": "convnet", "seed": seed,
        }))
    (root / "sweep" / "multirun.yaml").write_text("not: results\n")


@pytest.fixture
def cells(tmp_path):
    write_runs(tmp_path)
    results = find_results([tmp_path])
    assert len(results) == 4
    return collect(results)


def _pooled(method, ipc):
    accs = [a for _, m, _, i, _, acc in RUNS if m == method and i == ipc for a in acc]
    return 100 * np.mean(accs), 100 * np.std(accs)


def _md_table(text):
    lines = text.strip().splitlines()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    assert set(lines[1]) <= {"|", "-"}
    return rows[0], {r[0]: dict(zip(rows[0], r)) for r in rows[2:]}


def test_collect_pools_per_model_accuracies(cells):
    assert set(cells) == {("random", "digits", 1), ("random", "digits", 10), ("herding", "digits", 1)}
    c = cells[("random", "digits", 1)]
    mean, std = _pooled("random", 1)
    assert c.runs == 2 and len(c.accs) == 6
    assert c.mean == pytest.approx(mean, abs=1e-9) and c.std == pytest.approx(std, abs=1e-9)
    # pooling is not the mean of per-run means' spread: the std covers all 6 models
    run_means = [np.mean([0.30, 0.34, 0.29]), np.mean([0.41, 0.37, 0.40])]
    assert c.std != pytest.approx(100 * np.std(run_means), abs=1e-3)
    assert cells[("random", "digits", 10)].runs == 1 and cells[("herding", "digits", 1)].runs == 1


def test_collect_by_model(tmp_path):
    write_runs(tmp_path)
    results = find_results([tmp_path])
    (first,) = [r for r in results if r["method"] == "random" and r["ipc"] == 1 and r["seed"] == 0]
    first["model"] = "resnet18"
    cells = collect(results, by_model=True)
    assert cells[("random (resnet18)", "digits", 1)].runs == 1
    assert cells[("random (convnet)", "digits", 1)].runs == 1


def test_markdown(cells):
    header, rows = _md_table(render(cells, "md"))
    assert header == ["method", "digits ipc1", "digits ipc10"]
    assert set(rows) == {"random", "herding"}
    for method, ipc, n in [("random", 1, 2), ("random", 10, 1), ("herding", 1, 1)]:
        mean, std = _pooled(method, ipc)
        assert rows[method][f"digits ipc{ipc}"] == f"{mean:.1f} ± {std:.1f} (n={n})"
    assert rows["herding"]["digits ipc10"] == ""  # missing, not 0


def test_csv(cells):
    rows = list(csv.reader(io.StringIO(render(cells, "csv"))))
    assert len(rows) == 3 and all(len(r) == 3 for r in rows)
    assert rows[0] == ["method", "digits ipc1", "digits ipc10"]
    by_method = {r[0]: r for r in rows[1:]}
    assert by_method["herding"][2] == ""
    mean, std = _pooled("random", 10)
    assert by_method["random"][2] == f"{mean:.1f} ± {std:.1f} (n=1)"


def test_latex(cells):
    tex = render(cells, "latex")
    assert r"\begin{tabular}{lcc}" in tex and r"\end{tabular}" in tex
    assert r"$\pm$" in tex and "±" not in tex
    body = [line for line in tex.splitlines() if line.startswith("herding")]
    assert len(body) == 1 and body[0].rstrip().endswith(r"&  \\")  # blank last cell


def test_unknown_format(cells):
    with pytest.raises(DDError, match="xml"):
        render(cells, "xml")


REFERENCE = """\
methods:
  random:
    digits-1: "30.0±1.0"
    digits-10: 80.5
  herding:
    digits-1: "50.0 +- 2.0"
  mtt:
    digits-1: 90.1±0.5
    digits-10: "95.0"
"""


def test_load_reference(tmp_path):
    p = tmp_path / "published.yaml"
    p.write_text(REFERENCE)
    ref = load_reference(p)
    assert ref == {
        ("random", "digits", 1): (30.0, 1.0),
        ("random", "digits", 10): (80.5, None),
        ("herding", "digits", 1): (50.0, 2.0),
        ("mtt", "digits", 1): (90.1, 0.5),
        ("mtt", "digits", 10): (95.0, None),
    }


def test_reference_beside_ours(cells, tmp_path):
    p = tmp_path / "published.yaml"
    p.write_text(REFERENCE)
    _, rows = _md_table(render(cells, "md", load_reference(p)))
    mean, std = _pooled("random", 1)
    assert rows["random"]["digits ipc1"] == f"{mean:.1f} ± {std:.1f} (n=2) [paper 30.0 ± 1.0; {mean - 30.0:+.1f}]"
    mean10, _ = _pooled("random", 10)
    assert rows["random"]["digits ipc10"].endswith(f"[paper 80.5; {mean10 - 80.5:+.1f}]")
    hmean, _ = _pooled("herding", 1)
    assert rows["herding"]["digits ipc1"].endswith(f"[paper 50.0 ± 2.0; {hmean - 50.0:+.1f}]")
    assert rows["herding"]["digits ipc10"] == ""  # no run of ours: no paper figure in our row
    # a published method we did not run appears as its own (paper) row
    assert rows["mtt (paper)"]["digits ipc1"] == "90.1 ± 0.5"
    assert rows["mtt (paper)"]["digits ipc10"] == "95.0"


def test_bad_reference(tmp_path):
    with pytest.raises(DDError, match="cannot be read"):
        load_reference(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [unclosed\n")
    with pytest.raises(DDError):
        load_reference(bad)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "methods"),  # empty file
        ("- 1\n- 2\n", "methods"),  # not a mapping
        ("methods: [random]\n", "methods"),
        ("methods:\n  random: [1, 2]\n", "methods"),
        ("methods:\n  random:\n    digits10: 46.3\n", "digits10"),  # no -<ipc>
        ("methods:\n  random:\n    digits-10: lots\n", "lots"),  # not a number
    ],
)
def test_malformed_reference_is_a_clean_error(tmp_path, text, needle):
    p = tmp_path / "published.yaml"
    p.write_text(text)
    with pytest.raises(DDError, match=needle):
        load_reference(p)


def test_reference_without_entries_is_empty(tmp_path):
    p = tmp_path / "published.yaml"
    p.write_text("methods:\n")
    assert load_reference(p) == {}


def test_plot_writes_png(cells, tmp_path):
    from PIL import Image

    out = tmp_path / "plots" / "acc.png"
    plot(cells, out)
    with Image.open(out) as im:
        im.verify()
        assert im.format == "PNG"
    assert [p.name for p in out.parent.iterdir()] == ["acc.png"]


def test_cli(tmp_path, capsys):
    write_runs(tmp_path)
    table_main([str(tmp_path / "sweep"), str(tmp_path / "other"), "--format", "csv"])
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["method", "digits ipc1", "digits ipc10"] and len(rows) == 3


@pytest.mark.parametrize("make", ["missing", "empty", "badjson"])
def test_cli_errors_exit_2(tmp_path, capsys, make):
    target = tmp_path / "runs"
    if make != "missing":
        target.mkdir()
    if make == "badjson":
        (target / "results.json").write_text("{oops")
    with pytest.raises(SystemExit) as info:
        table_main([str(target)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dd-table: error:") and len(err.splitlines()) == 1 and str(target) in err


def test_paper_max_stat_takes_the_selection_round_and_is_labelled(tmp_path, capsys):
    write_runs(tmp_path)
    d = tmp_path / "mtt"
    d.mkdir()
    (d / "results.json").write_text(json.dumps({
        "accuracy": {"mean": 0.6, "std": 0.0, "per_model": [0.6, 0.6]},
        "paper_max": {"mean": 0.7, "std": 0.0, "per_model": [0.7, 0.7], "iteration": 300},
        "method": "mtt", "dataset": "digits", "ipc": 1, "model": "convnet", "seed": 0,
    }))
    results = find_results([tmp_path])
    assert collect(results)[("mtt", "digits", 1)].mean == pytest.approx(60.0)
    paper = collect(results, stat="paper_max")
    assert paper[("mtt", "digits", 1)].mean == pytest.approx(70.0)
    assert paper[("random", "digits", 1)].mean == pytest.approx(_pooled("random", 1)[0])  # no selection: accuracy
    table_main([str(tmp_path), "--stat", "paper_max"])
    out = capsys.readouterr().out
    assert "PICKED ON THE TEST SPLIT" in out and "70.0" in out
    with pytest.raises(DDError, match="statistic 'best'"):
        collect(results, stat="best")


def write_sweep(root):
    """A 2x1 sweep over lr_init (two seeds of the better cell), plus one plain herding run."""
    runs = [("a", 0.1, 0, [0.80, 0.82]), ("b", 0.1, 1, [0.78, 0.84]), ("c", 0.01, 0, [0.60, 0.70])]
    for folder, lr_init, seed, accs in runs:
        d = root / folder
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({
            "accuracy": {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "per_model": accs},
            "method": "attention_labels", "dataset": "fortunes", "ipc": 1, "model": "minilm", "seed": seed,
            "config": {"seed": seed, "method": {"name": "attention_labels", "lr_init": lr_init, "epochs": 30,
                                                "compare": {}}},
        }))
    d = root / "h"
    d.mkdir()
    (d / "results.json").write_text(json.dumps({
        "accuracy": {"mean": 0.5, "std": 0.0, "per_model": [0.5]}, "method": "herding_text", "dataset": "fortunes",
        "ipc": 1, "model": "minilm", "seed": 0, "config": {"method": {"name": "herding_text"}}}))


def test_a_sweep_gets_one_row_per_setting_and_the_best_is_marked_as_picked_on_test(tmp_path, capsys):
    write_sweep(tmp_path)
    cells = collect(find_results([tmp_path]))
    good, bad = cells[("attention_labels [lr_init=0.1]", "fortunes", 1)], cells[("attention_labels [lr_init=0.01]", "fortunes", 1)]
    assert good.runs == 2 and len(good.accs) == 4 and bad.runs == 1  # seeds pool; settings split
    assert cells[("herding_text", "fortunes", 1)].sweep is None
    table_main([str(tmp_path)])
    out = capsys.readouterr().out
    _, rows = _md_table(out.split("\n\n")[0])
    assert rows["attention_labels [lr_init=0.1]"]["fortunes ipc1"].endswith("*")
    assert not rows["attention_labels [lr_init=0.01]"]["fortunes ipc1"].endswith("*")
    assert not rows["herding_text"]["fortunes ipc1"].endswith("*")  # not a sweep: nothing selected
    assert "PEEKS AT THE TEST SPLIT" in out


def test_runs_without_differing_settings_are_not_a_sweep(tmp_path, capsys):
    write_runs(tmp_path)
    table_main([str(tmp_path)])
    assert "selected" not in capsys.readouterr().out


def _write(root, folder, method, accs, ipc=1, **extra):
    d = root / folder
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({
        "accuracy": {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "per_model": accs},
        "method": method, "dataset": "digits", "ipc": ipc, "model": "convnet", "seed": 0, **extra,
    }))


def test_runs_that_picked_on_the_test_split_are_marked_and_the_caption_says_so(tmp_path, capsys):
    _write(tmp_path, "mtt", "mtt", [0.6], selection={"split": "test", "rounds": 3, "iteration": 2})
    _write(tmp_path, "datm", "datm", [0.6], selection={"split": "val", "rounds": 3, "iteration": 2})
    _write(tmp_path, "dc", "dc", [0.5], selection=None)  # select=last: no pick
    _write(tmp_path, "old_mtt", "mtt_old", [0.6], paper_max={"mean": 0.7, "std": 0.0, "per_model": [0.7]})
    _write(tmp_path, "old_dc", "dc_old", [0.5], config={"method": {"select": "best"}})
    _write(tmp_path, "random", "random", [0.3])
    table_main([str(tmp_path)])
    out = capsys.readouterr().out
    rows = {m: r["digits ipc1"] for m, r in _md_table(out)[1].items() if "digits ipc1" in r}
    marked = {m for m, text in rows.items() if "†" in text}
    assert marked == {"mtt", "mtt_old", "dc_old"}  # recorded test picks, and runs from before the block
    assert rows["mtt"].endswith("(n=1) †")
    assert "PEEKED AT THE SPLIT IT REPORTS" in out and "method.select=val" in out
    assert r"$^\dagger$" in render(collect(find_results([tmp_path])), fmt="latex")
    for folder in ("mtt", "old_mtt", "old_dc"):
        (tmp_path / folder / "results.json").unlink()
    table_main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "†" not in out  # val picks and no picks: no mark, no caption


def test_stored_soft_labels_get_a_labels_images_column(tmp_path, capsys):
    storage = {"labels": "fp16 logits of every class, 300 epochs"}
    _write(tmp_path, "a", "sre2l", [0.5], storage={**storage, "images_bytes": 40_000, "labels_bytes": 1_000_000})
    _write(tmp_path, "b", "sre2l", [0.6], storage={**storage, "images_bytes": 42_000, "labels_bytes": 1_400_000})
    _write(tmp_path, "c", "random", [0.3])
    _write(tmp_path, "d", "random", [0.8], ipc=10)  # a column without stored labels gets no extra column
    table_main([str(tmp_path)])
    out = capsys.readouterr().out
    header, rows = _md_table(out)
    # means over the cell's runs: 1.2 MB of labels, 41 KB of images, 1.2e6 / 41e3 = 29.27
    assert rows["sre2l"]["digits ipc1 labels/images"] == "1.2 MB / 41 KB (29.3x)"
    assert rows["random"]["digits ipc1 labels/images"] == ""
    assert "digits ipc10 labels/images" not in header and header.index("digits ipc1 labels/images") == 2
    assert "the bytes of the stored soft labels beside the images' bytes" in out
    assert "labels: fp16 logits of every class, 300 epochs" in out
    _write(tmp_path, "e", "sre2l", [0.4], ipc=10)
    (tmp_path / "a" / "results.json").unlink()
    (tmp_path / "b" / "results.json").unlink()
    out = render(collect(find_results([tmp_path])))
    assert "labels/images" not in out  # no run stores labels: no column, no caption
