"""The site is the reference: options, statistics and methods come from the code.

The options table is rendered from the pool constructor (scripts/docs_hooks.py, an MkDocs
hook): its defaults from the signature, its meanings from the docstring's ``Args:``. The
README carries the same table, which must be exactly the rendered one; `PoolStats`
documents every field; the built API page shows the table, the constructor, the fields,
and the methods in the order a program needs them.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import pgpool
from pgpool.base import PoolBase

ROOT = Path(__file__).resolve().parent.parent


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _hooks()


def keyword_options() -> list[str]:
    params = inspect.signature(PoolBase.__init__).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def test_every_option_has_a_meaning_and_nothing_else_does() -> None:
    assert list(hooks._meanings()) == keyword_options()


def test_every_setting_is_an_option() -> None:
    fields = set(pgpool.PoolOptions._fields) - {"minconn", "maxconn"}
    assert fields == set(keyword_options()) - {"open"}


def test_readme_options_table_is_the_rendered_one() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("| option | default | meaning |")
    table = readme[start : readme.index("\n\n", start)]
    assert table == hooks.options_table(), (
        "README.md's options table differs from the constructor's docstring: paste the"
        " output of `python scripts/docs_hooks.py`"
    )


def test_rendered_defaults_are_the_code_defaults() -> None:
    rows = {name: default for name, default, _ in hooks.options()}
    defaults = pgpool.PoolOptions._field_defaults
    assert rows["max_idle"] == f"{defaults['max_idle']:g}"
    assert rows["timeout"] == "30 (Simple: 0)"
    assert rows["clock"] == "`time.monotonic`"
    assert rows["open"] == "`True`"


def test_pool_stats_documents_every_field() -> None:
    doc = inspect.getdoc(pgpool.PoolStats) or ""
    documented = re.findall(r"^    (\w+): ", doc.partition("\nAttributes:\n")[2], re.MULTILINE)
    assert documented == list(pgpool.PoolStats._fields)


# A private name, a module file or the base layer; NamedTuple's own API (`_fields` and the
# like) is public despite its underscore.
INTERNAL = re.compile(r"`_(?!fields|field_defaults|replace|asdict)\w+|\.py\b|PoolBase")


def test_user_facing_docstrings_name_no_internals() -> None:
    public = [pgpool.ThreadedConnectionPool, pgpool.SimpleConnectionPool, pgpool.PoolOptions]
    public += [pgpool.AbstractConnectionPool, pgpool.PoolStats]
    for cls in public:
        for name, member in [(cls.__name__, cls), *inspect.getmembers(cls)]:
            if name.startswith("_") and name != cls.__name__:
                continue
            doc = inspect.getdoc(member) or "" if name == cls.__name__ or callable(member) else ""
            assert not INTERNAL.search(doc), f"{cls.__name__}.{name}: {doc}"


@pytest.fixture(scope="module")
def api_page(tmp_path_factory: pytest.TempPathFactory) -> str:
    site = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)]
    # The caller's environment (npm, its HOME), and mkdocs from this interpreter's venv.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")


def test_site_shows_the_options_table(api_page: str) -> None:
    for name, _, _ in hooks.options():
        assert f"<code>{name}</code>" in api_page, name
    assert "max_idle=600.0" in re.sub(r"<[^>]+>|\s", "", api_page)  # the signature


def test_site_documents_the_stats_fields(api_page: str) -> None:
    for field in pgpool.PoolStats._fields:
        assert f'title="pgpool.PoolStats.{field}">{field}<' in api_page, field


def test_site_lists_methods_in_the_order_a_program_needs_them(api_page: str) -> None:
    found = re.findall(r'id="pgpool\.AbstractConnectionPool\.(\w+)"', api_page)
    methods = [name for name in found if callable(getattr(pgpool.AbstractConnectionPool, name))]
    assert methods[:4] == ["getconn", "putconn", "connection", "closeall"]
    assert methods.index("maintain") > methods.index("stats")
