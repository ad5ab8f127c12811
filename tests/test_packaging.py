"""What ``pip install`` ships: the pool alone, typed, needing nothing but psycopg2.

The wheel is built from a copy of the files a source distribution would carry, without
build isolation (setuptools comes from the test extra), so the test needs no network and
leaves no ``build/`` folder in the clone.

The driver tests install that wheel into fresh virtual environments, as a user would:
with no driver, with the `binary` extra, and next to a psycopg2 built from source. They use
pip as it is configured on the machine (its index and its caches: after the first run,
psycopg2's source build comes from pip's wheel cache).
"""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import pgpool
import pgpool.cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "pgpool", src / "pgpool", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(src)],
        check=True,
        timeout=300,
    )  # fmt: skip
    (built,) = out.glob("pgpool-*.whl")
    return zipfile.ZipFile(built)


def _requires(wheel: zipfile.ZipFile) -> list[str]:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(wheel.read(name)).get_all("Requires-Dist", [])


def test_wheel_holds_pgpool_and_nothing_else(wheel: zipfile.ZipFile) -> None:
    top = {name.split("/")[0] for name in wheel.namelist()}
    assert top == {"pgpool", f"pgpool-{pgpool.__version__}.dist-info"}
    assert "pgpool/py.typed" in wheel.namelist()  # mypy users get our types
    shipped = {Path(n).name for n in wheel.namelist() if n.startswith("pgpool/")}
    assert "embedded.py" not in shipped  # the test server is a tool of the repository


def test_wheel_metadata(wheel: zipfile.ZipFile) -> None:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    meta = email.message_from_bytes(wheel.read(name))
    assert meta["License-Expression"] == "MIT"
    assert "Typing :: Typed" in meta.get_all("Classifier", [])
    runtime = [r for r in meta.get_all("Requires-Dist", []) if "extra ==" not in r]
    assert runtime == []  # neither psycopg2 nor psycopg2-binary: see pgpool/driver.py
    entry_points = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    assert b"pgpool = pgpool.cli:main" in wheel.read(entry_points[0])


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        pgpool.cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pgpool {pgpool.__version__}"


def test_bench_outside_a_clone_says_how_to_run_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(pgpool.cli, "REPOSITORY", tmp_path)  # an installed pgpool: no benchmarks/
    assert pgpool.cli.main(["bench", "--quick"]) == 2
    assert "bash scripts/bench.sh" in capsys.readouterr().err


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        pgpool.cli.main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "frobnicate" in capsys.readouterr().err


# -- the driver: which psycopg2 an install brings --------------------------------------------


def _venv(path: Path) -> Path:
    """A bare virtual environment (no pip: the test's own pip installs into it)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), *args],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _installed(python: Path) -> set[str]:
    out = _pip(python, "list", "--format=freeze", "--exclude-editable")
    assert out.returncode == 0, out.stderr
    return {line.split("==")[0].lower() for line in out.stdout.split()}


def _run(python: Path, code: str) -> subprocess.CompletedProcess[str]:
    # From a folder away from the clone, so that `import pgpool` finds the installed one.
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=60, cwd=python.parent
    )


@pytest.fixture(scope="module")
def wheel_file(wheel: zipfile.ZipFile) -> Path:
    assert wheel.filename is not None
    return Path(wheel.filename)


def test_without_a_driver_install_succeeds_and_import_says_what_to_install(
    wheel_file: Path, tmp_path: Path
) -> None:
    python = _venv(tmp_path / "venv")
    # --no-index: pip can find nothing but the wheel, so this passes only if pgpool requires
    # no other distribution.
    result = _pip(python, "install", "--no-index", str(wheel_file))
    assert result.returncode == 0, result.stderr
    assert _installed(python) == {"pgpool"}
    result = _run(python, "import pgpool")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: pgpool needs the psycopg2 driver"), last
    assert "pip install 'pgpool[binary]'" in last and "pip install 'pgpool[c]'" in last


def test_binary_extra_brings_the_wheel(wheel_file: Path, tmp_path: Path) -> None:
    python = _venv(tmp_path / "venv")
    result = _pip(python, "install", f"{wheel_file}[binary]")
    assert result.returncode == 0, result.stderr
    assert _installed(python) == {"pgpool", "psycopg2-binary"}
    result = _run(python, "import pgpool; print(pgpool.ThreadedConnectionPool.__name__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ThreadedConnectionPool"


@pytest.mark.skipif(shutil.which("pg_config") is None, reason="building psycopg2 needs pg_config")
def test_a_source_built_psycopg2_is_kept(wheel_file: Path, tmp_path: Path) -> None:
    python = _venv(tmp_path / "venv")
    # What psycopg2 recommends for production: built here, against the system's libpq.
    result = _pip(python, "install", "--no-binary", "psycopg2", "psycopg2>=2.9")
    assert result.returncode == 0, result.stderr
    result = _pip(python, "install", str(wheel_file))
    assert result.returncode == 0, result.stderr
    # pip put nothing over it: no psycopg2-binary to overwrite the psycopg2 package's files.
    assert _installed(python) == {"pgpool", "psycopg2"}
    result = _run(python, "import pgpool, psycopg2.pool; print(psycopg2.__file__)")
    assert result.returncode == 0, result.stderr


# -- what `import pgpool` costs ----------------------------------------------------------------

# Modules `import pgpool` once loaded and no longer does: each cost milliseconds that every
# process importing pgpool paid (issue 18). benchmarks/imports.py measures the time itself;
# this only checks that none of them comes back by an innocent-looking import.
HEAVY = {
    "dataclasses": "with inspect, ast and dis; PoolStats and PoolOptions are NamedTuples",
    "inspect": "pulled in by dataclasses",
    "psycopg2.extras": "helpers.py imports RealDictCursor when a DBHelper first runs",
    "ctypes": "connection.py imports it for the first cancel",
    "logging": "log.py imports it when the pool first logs",
    "traceback": "imported by logging, and by pool.py for max_lease's stacks",
    "tokenize": "imported by traceback, through linecache",
    "random": "base.jitter imports it for the first connection's expiry",
}


def test_import_pgpool_leaves_out_what_it_does_not_need() -> None:
    code = "import sys, pgpool; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(result.stdout.split())
    assert "pgpool" in loaded
    assert {name: why for name, why in HEAVY.items() if name in loaded} == {}
