"""Language-model corpora: documents with a domain each, split into train / validation / test by document.

A document's split is decided by a hash of its text (and `split_seed`), never by token window, so
nothing of a test document is trained on, a text repeated in the corpus lands on one side only, and
adding documents does not move the others.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from dd.errors import DDError

FORTUNES_ROOT = "/usr/share/games/fortunes"
SPLITS = ("train", "val", "test")


@dataclass
class LMCorpus:
    name: str
    docs: dict[str, list[str]]  # split -> documents
    domains: dict[str, list[str]]  # split -> the domain of each document
    fingerprint: str  # sha256 of the training split (texts and domains): score files and probes are keyed by it

    @property
    def domain_names(self) -> list[str]:
        return sorted(set(self.domains["train"]) | set(self.domains["test"]))

    def summary(self) -> dict:
        return {s: {"docs": len(self.docs[s]), "chars": sum(map(len, self.docs[s]))} for s in SPLITS} | {
            "domains": len(self.domain_names)}


def fingerprint(docs: list[str], domains: list[str]) -> str:
    h = hashlib.sha256()
    for text, domain in zip(docs, domains, strict=True):
        for field in (domain.encode(), text.encode()):  # length-prefixed: no two splits hash alike
            h.update(len(field).to_bytes(8, "little") + field)
    return h.hexdigest()


def split_of(text: str, seed: int, test_fraction: float, val_fraction: float) -> str:
    u = int.from_bytes(hashlib.sha256(f"{seed}\0{text}".encode()).digest()[:8], "little") / 2**64
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def fortunes(cfg) -> list[tuple[str, str]]:
    """Every fortune of every file (the file name is the domain), in file order."""
    root = Path(cfg.root or FORTUNES_ROOT).expanduser()
    if not root.is_dir():
        raise DDError(f"dataset.root={root}: no fortunes folder; install Debian's fortunes package "
                      "(apt-get install fortunes) or name a folder of fortune files")
    out = []
    for path in sorted(root.iterdir()):
        if path.is_file() and "." not in path.name:  # the .dat / .u8 files are indexes and copies
            for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
                out.append((entry.strip("%\n"), path.name))
    return out


def debian(cfg) -> list[tuple[str, str]]:
    """Package descriptions of the apt lists (one per source package); the archive section is the domain."""
    from types import SimpleNamespace

    from dd.data.corpora import debian_sections

    sections = list(cfg.domains) or ["admin", "devel", "doc", "games", "graphics", "libs", "mail", "math",
                                     "net", "science", "sound", "text", "utils", "web"]
    found = debian_sections(SimpleNamespace(categories=sections, root=cfg.root))
    return [(text, section) for section in sections for text in found[section]]


def read_records(path: Path, cfg) -> list[tuple[str, str]]:
    if not path.is_file():
        raise DDError(f"{path} does not exist; give a jsonl, csv, tsv, parquet or txt file")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [(line, "all") for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    import pandas as pd

    readers = {".jsonl": lambda p: pd.read_json(p, lines=True), ".json": lambda p: pd.read_json(p, lines=True),
               ".csv": pd.read_csv, ".tsv": lambda p: pd.read_csv(p, sep="\t"), ".parquet": pd.read_parquet}
    if suffix not in readers:
        raise DDError(f"{path}: format '{suffix}' is not supported; use .jsonl, .csv, .tsv, .parquet or .txt")
    try:
        frame = readers[suffix](path)
    except ValueError as e:
        raise DDError(f"{path} could not be read as {suffix[1:]}: {e}") from None
    return frame_records(frame, cfg, str(path))


def frame_records(frame, cfg, where: str) -> list[tuple[str, str]]:
    if len(frame) == 0:
        raise DDError(f"{where} holds no documents; give a non-empty corpus")
    for key in ("text_column", "domain_column"):
        column = cfg.get(key)
        if column is not None and column not in frame.columns:
            raise DDError(f"dataset.{key}={column} is not a column of {where}; its columns: {', '.join(map(str, frame.columns))}")
    texts = frame[cfg.text_column].astype(str).tolist()
    domains = frame[cfg.domain_column].astype(str).tolist() if cfg.domain_column else ["all"] * len(texts)
    return list(zip(texts, domains, strict=True))


def hf(cfg) -> list[tuple[str, str]]:
    try:
        import datasets
    except ImportError:
        raise DDError("dataset.source=hf needs the `datasets` package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(cfg.hf_path, cfg.hf_subset, split=cfg.hf_split)
    except Exception as e:  # noqa: BLE001 - the library raises many types for a missing dataset
        raise DDError(f"dataset.hf_path={cfg.hf_path}: could not load it from the cache: {str(e).splitlines()[0]}") from None
    return frame_records(ds.to_pandas(), cfg, cfg.hf_path)


SOURCES = {"fortunes": fortunes, "debian": debian, "hf": hf}


def load_corpus(cfg) -> LMCorpus:
    for key in ("test_fraction", "val_fraction"):
        if not 0 <= cfg[key] < 1:
            raise DDError(f"dataset.{key}={cfg[key]} is not allowed; it must be in [0, 1)")
    if cfg.test_fraction + cfg.val_fraction >= 1:
        raise DDError(f"dataset.test_fraction={cfg.test_fraction} and dataset.val_fraction={cfg.val_fraction} leave "
                      "nothing to train on; their sum must be below 1")
    if cfg.max_docs is not None and cfg.max_docs <= 0:
        raise DDError(f"dataset.max_docs={cfg.max_docs} is not allowed; it must be a positive number (or null)")
    if cfg.source == "files":
        if not cfg.train_file:
            raise DDError("dataset=lm_files needs dataset.train_file=<jsonl, csv, tsv, parquet or txt file>")
        records = read_records(Path(cfg.train_file).expanduser(), cfg)
        test = read_records(Path(cfg.test_file).expanduser(), cfg) if cfg.test_file else None
    elif cfg.source in SOURCES:
        records, test = SOURCES[cfg.source](cfg), None
    else:
        raise DDError(f"dataset.source={cfg.source} is unknown; choose one of: files, {', '.join(SOURCES)}")
    keep = set(cfg.domains) if cfg.domains and cfg.source != "debian" else None

    def clean(rows):
        rows = [(t.strip(), d) for t, d in rows if len(t.strip()) >= cfg.min_chars and (keep is None or d in keep)]
        return rows[: cfg.max_docs] if cfg.max_docs else rows

    records = clean(records)
    docs = {s: [] for s in SPLITS}
    domains = {s: [] for s in SPLITS}
    test_fraction = cfg.test_fraction if test is None else 0.0  # a given test file: the hash cuts validation only
    for text, domain in records:
        s = split_of(text, cfg.split_seed, test_fraction, cfg.val_fraction)
        docs[s].append(text)
        domains[s].append(domain)
    if test is not None:
        rows = clean(test)
        docs["test"], domains["test"] = [t for t, _ in rows], [d for _, d in rows]
    if not docs["train"]:
        raise DDError(f"dataset={cfg.name}: the corpus has no training documents (of at least dataset.min_chars="
                      f"{cfg.min_chars} characters); give a non-empty corpus")
    if not docs["test"]:
        raise DDError(f"dataset={cfg.name}: no test documents; give dataset.test_file or a dataset.test_fraction above 0 "
                      f"(now {cfg.test_fraction}) on a corpus of more than {len(records)} documents")
    return LMCorpus(cfg.name, docs, domains, fingerprint(docs["train"], domains["train"]))
