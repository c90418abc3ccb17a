"""The manual builds: `mkdocs build --strict` (what `make docs` runs), offline, into a temporary folder.

Strict mode turns every warning into a failure: a broken link or anchor, a page missing from the nav, an API
reference (`::: dd.pipeline`) that does not resolve. The configuration and method tables are generated from
the schemas while it builds (docs/_hooks/generate.py), so a renamed key or a new method shows up there, and a
directive the hook cannot serve fails the build.
"""

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') is not installed")
pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings-python is not installed")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    # any attempt to reach the network (fonts, plugins, inventories) goes to a closed port and fails the build
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HTTP_PROXY": closed, "HTTPS_PROXY": closed,
           "http_proxy": closed, "https_proxy": closed, "NO_PROXY": "", "no_proxy": ""}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                        "--site-dir", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text()


def test_the_site_builds_strictly_and_fetches_nothing(site):
    assert (site / "index.html").is_file() and (site / "search" / "search_index.json").is_file()
    for html in site.rglob("*.html"):
        text = html.read_text()
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, html
        # nothing in a page's head is loaded from elsewhere
        head = text.split("</head>")[0]
        assert not re.search(r'<(?:link|script)[^>]+(?:href|src)="https?://', head), html


def test_the_reference_is_generated_from_the_schemas(site):
    from dd.config import kind_roots
    from dd.registry import KINDS, registry

    config = page(site, "reference/config")
    for kind, root in kind_roots().items():
        for f in dataclasses.fields(root):
            if f.name not in ("dataset", "model", "method"):
                assert f"<code>{f.name}</code>" in config or f"<code>{f.name}." in config, (kind, f.name)
    assert "<code>eval.num_models</code>" in config and "<code>prune.keep</code>" in config
    methods = page(site, "reference/methods")
    for kind in KINDS:
        for name in registry(kind).names():
            assert f"method={name}" in methods, (kind, name)
    api = page(site, "reference/api")
    for module in ("dd.pipeline", "dd.results", "dd.registry", "dd.config"):
        assert f'id="{module}"' in api, module
    assert "usage: dd-table" in page(site, "reference/commands")


def test_an_unknown_directive_or_missing_source_stops_the_build():
    from mkdocs.exceptions import PluginError

    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "_hooks" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert "| `prune.keep` |" in gen.expand("<!-- gen:kind lm -->", "x.md")
    for bad in ("<!-- gen:nope -->", "<!-- gen:table experiments/none.md \"## x\" 1 -->",
                "<!-- gen:schema dd.config:NoSuchSchema -->", "<!-- gen:kind video -->"):
        with pytest.raises(PluginError):
            gen.expand(bad, "x.md")
