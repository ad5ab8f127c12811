"""MkDocs hook: the reference parts of the site rendered from the code, at build time.

The options table (name, default, meaning) is rendered from the pool constructor's
signature (the defaults) and its docstring's ``Args:`` section (the meanings), so the site
and the README say what the code says; tests/test_docs_reference.py checks that the
README's table is this one. A page asks for a rendered part with a marker comment:

    <!-- reference: options -->       the options table
    <!-- reference: signature -->     the constructor's signature, as a code block

It also serves the diagrams' script from the site itself, so that they render offline:
Material loads Mermaid from a CDN unless the page already has it. The script (3.5 MB, too
big to commit) comes from the npm registry at the first build (`npm pack`), into
`.venv/mermaid/`, and is copied into every build; `PGPOOL_MERMAID_JS` may name a copy
instead. Without npm the site still builds, with the diagrams loaded from the CDN.

`python scripts/docs_hooks.py` prints the options table (to paste into the README).
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pgpool
from pgpool.base import PoolBase

ARGS_ENTRY = re.compile(r"^    (?P<name>\w+): (?P<text>.*)$")


def _meanings() -> dict[str, str]:
    """The constructor docstring's ``Args:`` entries, each joined into one line."""
    doc = inspect.getdoc(PoolBase.__init__) or ""
    section = doc.partition("\nArgs:\n")[2]
    meanings: dict[str, str] = {}
    name = ""
    for line in section.splitlines():
        if not line.strip():
            break
        entry = ARGS_ENTRY.match(line)
        if entry:
            name = entry["name"]
            meanings[name] = entry["text"].strip()
        elif line.startswith("        ") and name:
            meanings[name] += " " + line.strip()
        else:
            break
    return meanings


def _default(name: str, value: Any) -> str:
    if name == "timeout":  # None in the signature: each pool class has its own
        threaded = pgpool.ThreadedConnectionPool._default_timeout
        simple = pgpool.SimpleConnectionPool._default_timeout
        return f"{threaded:g} (Simple: {simple:g})"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{value}`"
    if isinstance(value, int | float):
        return f"{value:g}"
    if callable(value):
        return f"`{value.__module__}.{value.__name__}`"
    return f"`{value!r}`"


def options() -> list[tuple[str, str, str]]:
    """(name, default, meaning) of every keyword-only option, in the signature's order."""
    meanings = _meanings()
    rows = []
    for param in inspect.signature(PoolBase.__init__).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        rows.append((param.name, _default(param.name, param.default), meanings[param.name]))
    return rows


def options_table() -> str:
    lines = ["| option | default | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {default} | {meaning} |" for name, default, meaning in options()]
    return "\n".join(lines)


def signature() -> str:
    """The constructor every pool class shares, one option per line."""
    params = list(inspect.signature(PoolBase.__init__).parameters.values())[1:]
    lines = ["ThreadedConnectionPool(  # Simple- and NullConnectionPool take the same arguments"]
    for param in params:
        if param.kind is inspect.Parameter.KEYWORD_ONLY:
            value = param.default
            shown = f"{value.__module__}.{value.__name__}" if callable(value) else repr(value)
            lines.append(f"    {param.name}={shown},")
            if param.name == "timeout":
                lines[-1] += f"  # None: {_default('timeout', None)}"
        else:
            lines.append(f"    {param.replace(annotation=inspect.Parameter.empty)},")
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            lines[-1] += "  # psycopg2.connect's arguments, then pgpool's keyword-only options:"
    lines.append(")")
    return "```python\n" + "\n".join(lines) + "\n```"


# -- the diagrams' script, served from the site -------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
MERMAID_VERSION = "11.17.2"  # Material's diagrams integration expects Mermaid 11
MERMAID_CACHE = ROOT / ".venv" / "mermaid" / MERMAID_VERSION / "mermaid.min.js"
MERMAID_URL = "assets/javascripts/mermaid.min.js"  # where the built site serves it
log = logging.getLogger("mkdocs.hooks.docs_hooks")


def mermaid_script() -> Path | None:
    """The Mermaid script to serve: PGPOOL_MERMAID_JS, the cached copy, or one fetched with
    npm now; None when none can be had."""
    named = os.environ.get("PGPOOL_MERMAID_JS")
    if named:
        return Path(named)
    if MERMAID_CACHE.is_file():
        return MERMAID_CACHE
    npm = shutil.which("npm")
    if npm is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        command = [npm, "pack", f"mermaid@{MERMAID_VERSION}", "--silent"]
        done = subprocess.run(command, cwd=tmp, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log.info("npm pack mermaid failed (%s): diagrams load from the CDN", done.stderr)
            return None
        with tarfile.open(Path(tmp) / done.stdout.strip().splitlines()[-1]) as tar:
            member = tar.extractfile("package/dist/mermaid.min.js")
            assert member is not None
            MERMAID_CACHE.parent.mkdir(parents=True, exist_ok=True)
            MERMAID_CACHE.write_bytes(member.read())
    return MERMAID_CACHE


def on_config(config: Any) -> Any:
    if mermaid_script() is not None:
        config.extra_javascript.append(MERMAID_URL)
    else:
        log.info("no npm and no PGPOOL_MERMAID_JS: the diagrams load Mermaid from a CDN")
    return config


def on_post_build(config: Any) -> None:
    script = mermaid_script()
    if script is not None:
        target = Path(config.site_dir) / MERMAID_URL
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(script, target)


# -- the markers ----------------------------------------------------------------------------

PARTS = {"options": options_table, "signature": signature}
MARKER = re.compile(r"<!-- reference: (?P<part>\w+) -->")


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return MARKER.sub(lambda m: PARTS[m["part"]](), markdown)


if __name__ == "__main__":
    print(options_table())
