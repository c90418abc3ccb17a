"""MkDocs hook: the reference pages' tables are generated from the code at build time, so they cannot drift.

A page asks for a table with one line of its own, an HTML comment (indented, the output is indented alike):

    <!-- gen:kind image -->                     the image run's root keys and each of its sections
    <!-- gen:schema dd.data.images:ImageDatasetConfig dataset -->   one schema's keys, under a prefix
    <!-- gen:methods image -->                  every image method's schema (dd.registry)
    <!-- gen:contract image -->                 the image registry's contract (its docstring)
    <!-- gen:options dataset -->                the options of a config group (dd/conf/<group>/*.yaml)
    <!-- gen:presets -->                        the experiment presets (dd.presets, as dd-presets lists them)
    <!-- gen:yaml dd/conf/hydra/launcher/slurm.yaml hydra.launcher -->   a YAML file's keys and comments
    <!-- gen:help dd-table -->                  an argparse command's --help
    <!-- gen:docstring dd.seeds -->             a module's docstring, as a block
    <!-- gen:table experiments/lm/README.md "## fortunes" 1 -->   the 1st table under that heading
    <!-- gen:published experiments/fashion_mnist/published.yaml -->   the published figures and sources

A key's description is the comment beside its field (`x: int = 1  # what x is`) or, failing that, the
comment lines right above it. An unknown directive, a missing file or heading, or a schema that cannot be
read stops the build.
"""

import contextlib
import dataclasses
import importlib
import io
import json
import os
import re
import shlex
import textwrap
import tokenize
import typing
from pathlib import Path

import yaml
from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]  # the repository (mkdocs.yml's folder)
DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)<!--\s*gen:(?P<name>[a-z_-]+)(?P<args>.*?)-->[ \t]*$", re.M)
KINDS = ("image", "text", "lm")


# --- text helpers -------------------------------------------------------------------------------------------


def cell(text: str) -> str:
    """Text safe in a Markdown table cell: pipes outside code spans escaped, HTML-looking words kept as text."""
    parts = re.split(r"(`[^`]*`)", " ".join(str(text).split()))
    out = []
    for p in parts:
        if p.startswith("`") and p.endswith("`") and len(p) > 1:
            out.append(p)
        else:
            out.append(p.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "&#124;")
                       .replace("*", "\\*"))
    return "".join(out)


def code(value: str) -> str:
    value = str(value)
    tick = "``" if "`" in value else "`"
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{tick}{pad}{value}{pad}{tick}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def show(value) -> str:
    """A default as YAML would spell it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "???":
        return "required"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and (value != value.strip() or "\n" in value or not value):
        return json.dumps(value)  # quoted, so spaces and line breaks show
    return str(value)


def type_name(t) -> str:
    if isinstance(t, str):
        return t.replace("typing.", "")
    if t is typing.Any:
        return "Any"
    if isinstance(t, type) and not typing.get_args(t):
        return t.__name__
    return str(t).replace("typing.", "").replace("NoneType", "None")


def src(path: str | Path) -> str:
    """A repository file's path as the reader sees it (relative, with forward slashes)."""
    return Path(path).resolve().relative_to(ROOT).as_posix()


# --- schemas ------------------------------------------------------------------------------------------------


def field_comments(cls: type) -> dict[str, str]:
    """{field: its comment} from the class's own source: the block of comment lines right above the field (a
    blank line or another statement ends a block), then the comment on the field's own line(s). Comment lines that
    follow a field whose comment left a parenthesis open continue that comment."""
    import inspect

    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    pending: list[str] = []
    depth = 0
    line_tokens: list[tokenize.TokenInfo] = []
    prev, last, last_open = None, None, False
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        prev, before = tok.type, prev
        if tok.type == tokenize.INDENT:
            depth += 1
            continue
        if tok.type == tokenize.DEDENT:
            depth -= 1
            continue
        if tok.type == tokenize.COMMENT and not line_tokens:
            if depth == 1:
                pending.append(tok.string.lstrip("#").strip())
            continue
        if tok.type == tokenize.NL and not line_tokens:
            if before != tokenize.COMMENT:
                pending = []  # a blank line ends a comment block
            continue
        if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            words = [t for t in line_tokens if t.type not in (tokenize.COMMENT, tokenize.NL)]
            trailing = [t.string.lstrip("#").strip() for t in line_tokens if t.type == tokenize.COMMENT]
            if depth == 1 and len(words) >= 2 and words[0].type == tokenize.NAME and words[1].string == ":":
                if last and pending and last_open:  # the previous comment's open "(" goes on over these lines
                    comments[last] += " " + " ".join(pending)
                    pending = []
                text = " — ".join(filter(None, (" ".join(pending), " ".join(trailing))))  # a block above, then its own
                if text:
                    comments[words[0].string] = text
                last = words[0].string if text else None
                last_open = bool(text) and text.count("(") > text.count(")")
            pending, line_tokens = [], []
            continue
        line_tokens.append(tok)
    return comments


def comments_of(cls: type) -> dict[str, str]:
    """Field comments along the class's bases, a subclass's own winning."""
    found: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            found.update(field_comments(base))
    return found


def default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "???"


def where(cls: type) -> str:
    import inspect

    return f"`{cls.__name__}` in `{src(inspect.getsourcefile(cls))}`"


def key_rows(cls: type, prefix: str, skip: tuple[str, ...] = ()) -> tuple[list[list[str]], list[tuple]]:
    """(rows of the plain keys, [(key, dataclass instance)] of the sections)."""
    notes = comments_of(cls)
    rows, sections = [], []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = default_of(f)
        if dataclasses.is_dataclass(value):
            sections.append((key, value, notes.get(f.name, "")))
            continue
        rows.append([code(key), code(type_name(f.type)), code(show(value)), cell(notes.get(f.name, ""))])
    return rows, sections


def schema_block(cls: type, prefix: str, level: int = 3, skip: tuple[str, ...] = (), title: str | None = None,
                 note: str = "") -> str:
    rows, sections = key_rows(cls, prefix, skip)
    out = []
    if title is not None:
        out.append(f"{'#' * level} {title}\n")
        out.append(f"{where(cls)}{': ' + cell(note) if note else ''}.\n")
    if rows:
        out.append(table(["key", "type", "default", "what it is"], rows))
    else:
        out.append("No keys of its own.\n")
    for key, value, text in sections:
        out.append(schema_block(type(value), key, level + (0 if title is None else 1), title=f"`{key}`", note=text))
    return "\n".join(out)


def import_object(spec: str):
    module, _, name = spec.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, name.split(".")):
        obj = getattr(obj, part)
    return obj


def gen_kind(kind: str) -> str:
    from dd.config import kind_roots

    roots = kind_roots()
    if kind not in roots:
        raise PluginError(f"gen:kind {kind}: kinds are {', '.join(roots)}")
    root = roots[kind]
    rows, sections = key_rows(root, "", skip=("dataset", "model", "method"))
    out = [f"The root schema is {where(root)}; `dataset`, `model` and `method` take the schemas of their groups "
           "(below).\n", table(["key", "type", "default", "what it is"], rows)]
    for key, value, text in sections:
        out.append(schema_block(type(value), key, level=4, title=f"`{key}`", note=text))
    return "\n".join(out)


def gen_schema(spec: str, prefix: str = "", *skip: str) -> str:
    cls = import_object(spec)
    if not dataclasses.is_dataclass(cls):
        raise PluginError(f"gen:schema {spec} is not a dataclass")
    return f"{where(cls)}.\n\n" + schema_block(cls, prefix, level=4, skip=skip)


def method_yaml(name: str) -> tuple[str, dict]:
    from dd.config import CONF_DIR

    path = CONF_DIR / "method" / f"{name}.yaml"
    if not path.is_file():
        return "", {}
    text = path.read_text()
    return leading_comment(text), {k: v for k, v in (yaml.safe_load(text) or {}).items() if k not in ("name", "defaults")}


def gen_methods(kind: str) -> str:
    import inspect

    from dd.registry import registry

    out = []
    for name, method in sorted(registry(kind).methods().items()):
        schema = method.schema
        out.append(f"### `method={name}`\n")
        about, sets = method_yaml(name)
        module = src(inspect.getsourcefile(method.run))
        out.append(f"Module `{module}`; schema {where(schema)}; options file `dd/conf/method/{name}.yaml`.\n")
        if about:
            out.append(cell(about) + "\n")
        if sets:
            out.append("The options file sets: " + ", ".join(code(f"{k}={show(v)}") for k, v in sets.items()) + ".\n")
        out.append(schema_block(schema, "method", skip=("name",)))
    return "\n".join(out)


def gen_contract(kind: str) -> str:
    from dd.registry import registry

    reg = registry(kind)
    doc = textwrap.dedent(reg.__doc__ or "").strip()
    return f"Declared in `dd/{kind}/base.py` as `METHODS`; methods return `{reg.returns.__name__}`.\n\n```text\n{doc}\n```\n"


def gen_docstring(module: str) -> str:
    doc = importlib.import_module(module).__doc__ or ""
    return f"```text\n{textwrap.dedent(doc).strip()}\n```\n"


# --- config groups and YAML ---------------------------------------------------------------------------------


def leading_comment(text: str) -> str:
    """The comment lines a YAML file opens with (after `# @package ...`)."""
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("# @package"):
            continue
        if not s.startswith("#"):
            break
        lines.append(s.lstrip("#").strip())
    return " ".join(lines)


def option_kind(doc: dict, text: str) -> str:
    m = re.search(r"override /kind@_global_\.kind:\s*(\w+)", text)
    if m:
        return m.group(1)
    schemas = " ".join(d for d in (doc.get("defaults") or []) if isinstance(d, str))
    if "lm_model_schema" in schemas or "lm_corpus" in schemas:
        return "lm"
    if "text_model_schema" in schemas or "text_schema" in schemas:
        return "text"
    return "image"


def gen_options(group: str) -> str:
    from dd.config import CONF_DIR

    folder = CONF_DIR / group
    if not folder.is_dir():
        raise PluginError(f"gen:options {group}: no folder {folder}")
    rows = []
    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text()
        doc = yaml.safe_load(text) or {}
        sets = {k: v for k, v in doc.items() if k not in ("defaults", "name")}
        shown = ", ".join(code(f"{k}={show(v)}") for k, v in sets.items())
        row = [code(f"{group}={path.stem}")]
        if group in ("dataset", "model"):
            row.append(option_kind(doc, text))
        row += [cell(leading_comment(text)), shown]
        rows.append(row)
    header = ["option"] + (["kind"] if group in ("dataset", "model") else []) + ["what it is", "what it sets"]
    return table(header, rows)


def gen_presets() -> str:
    from dd.presets import find_presets

    rows = []
    for p in find_presets():
        ipcs = ", ".join(map(str, p.ipcs)) if p.ipcs else "any"
        if p.ipcs and not p.per_ipc:
            ipcs += " (default; any runs)"
        rows.append([code(f"experiment={p.name}"), ipcs, cell(p.description), cell(p.target)])
    return table(["preset", "ipc", "what it is", "target"], rows)


def gen_yaml(path: str, prefix: str = "") -> str:
    file = ROOT / path
    if not file.is_file():
        raise PluginError(f"gen:yaml: no file {path}")
    rows = []
    for line in file.read_text().splitlines():
        m = re.match(r"^(\w+):\s*([^#]*?)\s*(?:#\s*(.*))?$", line)
        if not m or m.group(1) == "defaults":
            continue
        key = f"{prefix}.{m.group(1)}" if prefix else m.group(1)
        rows.append([code(key), code(m.group(2) or "null"), cell(m.group(3) or "")])
    return f"From `{path}`:\n\n" + table(["key", "default", "note"], rows)


# --- commands -----------------------------------------------------------------------------------------------

HELP = {"dd-table": "dd.cli.table", "dd-export": "dd.cli.export", "dd-import": "dd.cli.importer",
        "dd-presets": "dd.cli.presets"}


def gen_help(prog: str) -> str:
    if prog not in HELP:
        raise PluginError(f"gen:help {prog}: argparse commands are {', '.join(HELP)}")
    main = importlib.import_module(HELP[prog]).main
    buf = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        with contextlib.redirect_stdout(buf):
            try:
                main(["--help"])
            except SystemExit as e:
                if e.code not in (0, None):
                    raise PluginError(f"{prog} --help exited {e.code}") from None
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return f"```text\n$ {prog} --help\n{buf.getvalue().rstrip()}\n```\n"


# --- measured tables and published figures ------------------------------------------------------------------


def gen_table(path: str, heading: str, nth: str = "1") -> str:
    """The nth Markdown table after the first line that starts with `heading` in a repository file."""
    file = ROOT / path
    if not file.is_file():
        raise PluginError(f"gen:table: no file {path}")
    lines = file.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(heading)]
    if not starts:
        raise PluginError(f"gen:table: {path} has no line starting with {heading!r}")
    tables, current = [], []
    for line in lines[starts[0] + 1:]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
        if len(tables) >= int(nth):
            break
    if current:
        tables.append(current)
    if len(tables) < int(nth):
        raise PluginError(f"gen:table: {path} has no table {nth} under {heading!r}")
    return "\n".join(tables[int(nth) - 1]) + f"\n\n<small>Table from `{path}` (under “{heading.lstrip('# ')}”).</small>\n"


def gen_published(path: str) -> str:
    file = ROOT / path
    if not file.is_file():
        raise PluginError(f"gen:published: no file {path}")
    doc = yaml.safe_load(file.read_text()) or {}
    methods = doc.get("methods") or {}
    if not methods:
        return f"`{path}` publishes no figures.\n"

    def order(key: str):
        ds, _, ipc = str(key).rpartition("-")
        return (ds, 10**9 if not ipc.isdigit() else int(ipc))

    columns = sorted({str(k) for entries in methods.values() for k in (entries or {})}, key=order)
    rows = [[code(m)] + [cell(str((entries or {}).get(c, ""))) for c in columns] for m, entries in methods.items()]
    out = [table(["method"] + [code(c) for c in columns], rows)]
    sources = doc.get("sources") or {}
    if sources:
        out.append("Sources:\n")
        out += [f"- `{k}`: {cell(v)}" for k, v in sources.items()]
        out.append("")
    out.append(f"<small>From `{path}` (the file `dd-table --reference` reads).</small>\n")
    return "\n".join(out)


GENERATORS = {"kind": gen_kind, "schema": gen_schema, "methods": gen_methods, "contract": gen_contract,
              "options": gen_options, "presets": gen_presets, "yaml": gen_yaml, "help": gen_help,
              "docstring": gen_docstring, "table": gen_table, "published": gen_published}


def expand(markdown: str, page: str) -> str:
    def one(m: re.Match) -> str:
        name, args = m.group("name"), shlex.split(m.group("args"))
        if name not in GENERATORS:
            raise PluginError(f"{page}: unknown directive gen:{name}; known: {', '.join(GENERATORS)}")
        try:
            return textwrap.indent(GENERATORS[name](*args), m.group("indent"))
        except PluginError:
            raise
        except Exception as e:  # a schema or file that cannot be read stops the build, naming the directive
            raise PluginError(f"{page}: gen:{name} {' '.join(args)} failed: {type(e).__name__}: {e}") from e

    return DIRECTIVE.sub(one, markdown)


def on_page_markdown(markdown, page, config, files, **kwargs):
    return expand(markdown, page.file.src_path)
