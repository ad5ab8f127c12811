"""MkDocs hook: the reference parts of the site rendered from the code, at build time.

The options table (name, default, meaning) is rendered from the pool constructor's
signature (the defaults) and its docstring's ``Args:`` section (the meanings), so the site
and the README say what the code says; tests/test_docs_reference.py checks that the
README's table is this one. A page asks for a rendered part with a marker comment:

    <!-- reference: options -->       the options table
    <!-- reference: signature -->     the constructor's signature, as a code block

`python scripts/docs_hooks.py` prints the options table (to paste into the README).
"""

from __future__ import annotations

import inspect
import re
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


PARTS = {"options": options_table, "signature": signature}
MARKER = re.compile(r"<!-- reference: (?P<part>\w+) -->")


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return MARKER.sub(lambda m: PARTS[m["part"]](), markdown)


if __name__ == "__main__":
    print(options_table())
