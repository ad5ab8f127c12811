"""What ``pip install`` ships: the pool alone, typed, needing nothing but psycopg2.

The wheel is built from a copy of the files a source distribution would carry, without
build isolation (setuptools comes from the test extra), so the test needs no network and
leaves no ``build/`` folder in the clone.
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
    assert runtime == ["psycopg2-binary>=2.9"]
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
