"""`logger`: the `pgpool` logger, with `logging` imported the first time it is used.

`logging` brings traceback, linecache, tokenize, textwrap and string with it: about 3 ms,
which every process that imports pgpool would pay, most of what `import pgpool` added to
psycopg2.pool's own import (benchmarks/imports.py measures both). A pool logs nothing
until something happens (a connect, a close, a timeout; never a checkout's fast path), so
pgpool's modules log through this stand-in, which imports `logging` on its first use.

Every attribute is the real logger's, `logging.getLogger("pgpool")`, looked up at each
call: handlers, levels and filters set on that logger apply as to any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging


class _Logger:
    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        import logging  # after the first call, a look-up in sys.modules

        return getattr(logging.getLogger("pgpool"), name)


# Typed as what it stands for: each call is the real Logger's method.
logger: logging.Logger = _Logger()  # type: ignore[assignment]
