"""The exercises' checks check the learner: `python -m course.check NN` is run, as a learner
runs it, on a copy of the repository's course/ and pgpool/ in a temporary directory (the
working tree is never touched): on the unedited copy every check must say "not yet", and on
a copy with the reference solution applied it must say "done".

The reference solutions are below: for a *break it* exercise the one-place edit its chapter
describes, for a *build it* exercise a small working implementation. Each edit's old text
must occur exactly once, so a change to a course module that moves it fails here first, and
the exercise (and its chapter) is updated with it.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from course_support import Harness, Subject, _course

from course.check import EXERCISES, Exercise

ROOT = Path(__file__).resolve().parent.parent
LEARN = ROOT / "docs" / "learn"


@dataclass(frozen=True)
class Solution:
    exercise: str  # its key in course.check
    path: str  # the file it edits
    edits: tuple[tuple[str, str], ...]  # (old, new): old occurs exactly once

    def apply(self, root: Path) -> None:
        file = root / self.path
        source = file.read_text(encoding="utf-8")
        for old, new in self.edits:
            assert source.count(old) == 1, f"{self.exercise}: {old!r} not found once"
            source = source.replace(old, new)
        file.write_text(source, encoding="utf-8")


def block(indent: int, text: str) -> str:
    """`text` (a triple-quoted block) dedented, then indented by `indent` spaces."""
    return textwrap.indent(textwrap.dedent(text).lstrip("\n"), " " * indent)


BREAK = (
    Solution(
        "00",
        "course/step0_why.py",
        ((block(4, """
            def putconn(self, conn: Any) -> None:
                conn.close()
            """), block(4, """
            def putconn(self, conn: Any) -> None:
                pass
            """)),),
    ),
    Solution(
        "01",
        "course/step1_seed.py",
        ((block(12, """
            cursor.close()
            self._connection_pool.putconn(conn)
            """), block(12, """
            cursor.close()
            """)),),
    ),
    Solution(
        "02",
        "course/step2_queue.py",
        (("self._tokens.put(None)  # give the right", "pass  # give the right"),),
    ),
    Solution(
        "03",
        "course/step3_condition.py",
        (("        self._can_proceed.notify()", "        pass"),),
    ),
    Solution(
        "04",
        "course/step4_fifo.py",
        ((block(16, """
            waiter.conn = conn
            waiter.ring()
            """), block(16, """
            waiter.ring()
            waiter.conn = conn
            """)),),
    ),
    Solution(
        "04b",
        "course/step4b_barging.py",
        (("return bool(self._waiters) and now - self._waiters[0].since >= self.patience",
          "return False"),),
    ),
    Solution(
        "05",
        "course/step5_reserve.py",
        ((block(16, """
            self._size -= 1
            self._connecting -= 1
            """), block(16, """
            self._connecting -= 1
            """)),),
    ),
    Solution(
        "06",
        "course/step6_maintained.py",
        (("if self._still_good(conn):", "if True:"),),
    ),
    Solution(
        "07",
        "pgpool/state.py",
        ((block(8, """
            if self.waiters:
                return self._hand_over(slot, now)
            """), ""),),
    ),
)  # fmt: skip

BUILD = (
    # A connect budget for QueuePool: a semaphore held across the connect.
    Solution(
        "02-budget",
        "course/step2_queue.py",
        (
            ("import queue\n", "import queue\nimport threading\n"),
            ("timeout: float = 30.0,", "timeout: float = 30.0, max_connecting: int = 2,"),
            ("        self.closed = False\n", block(8, """
                self.closed = False
                self._budget = threading.BoundedSemaphore(max_connecting)
                """)),
            ("            return psycopg2.connect(", block(12, """
                with self._budget:
                    return psycopg2.connect(""").rstrip(" ")),
        ),
    ),
    # First come, first served with one Condition: callers take a place in line, and only
    # the first in line may proceed; every change wakes all, and each re-checks its place.
    Solution(
        "03-fifo",
        "course/step3_condition.py",
        (
            ("        self.waiting = 0", block(8, """
                self._line: list[object] = []  # callers waiting, first come first
                self.waiting = 0""")),
            ("            if not self._ready():\n", block(12, """
                if self._line or not self._ready():
                    me = object()
                    self._line.append(me)
                """)),
            ("self._can_proceed.wait_for(self._ready, wait)", (
                "served = self._can_proceed.wait_for(\n"
                "                        lambda: self._line[0] is me and self._ready(), wait\n"
                "                    )"
            )),
            ("                    self.waiting -= 1\n", block(16, """
                    self.waiting -= 1
                    self._line.remove(me)
                    self._can_proceed.notify_all()
                if not served:
                    raise PoolTimeout("timed out in line")
                """)),
            ("self._can_proceed.notify()  # wakes one", "self._can_proceed.notify_all()  # wakes"),
        ),
    ),
    # Clean returns for MaintainedPool: roll back before the connection goes idle, with no
    # lock held (a round trip); one that cannot roll back is closed, and so dropped.
    Solution(
        "06-clean",
        "course/step6_maintained.py",
        (
            ("    def _still_good(self, conn: Any) -> bool:\n", block(4, """
                def putconn(self, conn: Any) -> None:
                    idle = psycopg2.extensions.TRANSACTION_STATUS_IDLE
                    if not conn.closed and conn.get_transaction_status() != idle:
                        try:
                            conn.rollback()
                        except psycopg2.Error:
                            conn.close()
                    super().putconn(conn)

                def _still_good(self, conn: Any) -> bool:
                """)),
        ),
    ),
)  # fmt: skip

REPORT = re.compile(r"^\[(?P<mark>done|not yet)\] (?P<key>\S+) ", re.MULTILINE)


def copy_of_the_repository(into: Path, solutions: tuple[Solution, ...]) -> Path:
    """course/ and pgpool/ copied (the learner's side), tests/ and testbed/ linked."""
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("course", "pgpool"):
        shutil.copytree(ROOT / name, into / name, ignore=ignore)
    for name in ("tests", "testbed"):
        (into / name).symlink_to(ROOT / name)
    for solution in solutions:
        solution.apply(into)
    return into


def run_check(root: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPOOL_DSN": dsn, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "course.check", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def marks(output: str) -> dict[str, str]:
    return {match["key"]: match["mark"] for match in REPORT.finditer(output)}


@pytest.fixture(scope="module")
def reports(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each check's output on the unedited copy and on the copy with its solution."""
    keys = [exercise.key for exercise in EXERCISES]
    unedited = copy_of_the_repository(tmp_path_factory.mktemp("unedited"), ())
    broken = copy_of_the_repository(tmp_path_factory.mktemp("break"), BREAK)
    built = copy_of_the_repository(tmp_path_factory.mktemp("build"), BUILD)
    out = {"unedited": run_check(unedited, dsn, *keys).stdout}
    out["break"] = run_check(broken, dsn, *[s.exercise for s in BREAK]).stdout
    out["build"] = run_check(built, dsn, *[s.exercise for s in BUILD]).stdout
    return out


def test_every_exercise_has_a_reference_solution() -> None:
    assert sorted(s.exercise for s in BREAK + BUILD) == sorted(e.key for e in EXERCISES)
    assert len(BUILD) >= 3
    assert {e.kind for e in EXERCISES if e.key in {s.exercise for s in BUILD}} == {"build"}


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.key)
def test_the_check_fails_on_the_unedited_step(exercise: Exercise, reports: dict[str, str]) -> None:
    key = exercise.key
    assert marks(reports["unedited"]).get(key) == "not yet", reports["unedited"]


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.key)
def test_the_check_passes_on_the_reference_solution(
    exercise: Exercise, reports: dict[str, str]
) -> None:
    key = exercise.key
    output = reports["build" if "-" in key else "break"]
    assert marks(output).get(key) == "done", output


def test_chapter_5_says_it_breaks_step_6(reports: dict[str, str]) -> None:
    block = reports["break"].partition("[done] 05 ")[2].partition("\n[")[0]
    assert "step 6" in block and "--reset" in block, reports["break"]


def test_a_typo_is_not_a_broken_property(dsn: str, tmp_path: Path) -> None:
    """A break-it edit counts only when the named test fails the way the chapter says."""
    typo = Solution("00", "course/step0_why.py", (("        conn.close()", "        conn.clos()"),))
    root = copy_of_the_repository(tmp_path, (typo,))
    result = run_check(root, dsn, "00")
    assert marks(result.stdout) == {"00": "not yet"}, result.stdout
    assert "not the way the chapter says" in result.stdout
    assert result.returncode == 1


def test_a_file_that_does_not_import_is_named(dsn: str, tmp_path: Path) -> None:
    broken = Solution("00", "course/step0_why.py", (("class NoPool:", "class NoPool"),))
    result = run_check(copy_of_the_repository(tmp_path, (broken,)), dsn, "00")
    assert result.returncode == 2 and "a file does not import: SyntaxError" in result.stdout


def test_reset_restores_the_file(dsn: str, tmp_path: Path) -> None:
    root = copy_of_the_repository(tmp_path, ())
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "course", "pgpool"], check=True)
    subprocess.run([*git, "commit", "-qm", "start"], check=True)
    original = (root / "course/step0_why.py").read_text(encoding="utf-8")
    BREAK[0].apply(root)
    result = run_check(root, dsn, "00", "--reset")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (root / "course/step0_why.py").read_text(encoding="utf-8") == original


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.key)
def test_the_chapter_states_the_exercise_and_its_check(exercise: Exercise) -> None:
    key = exercise.key
    (chapter,) = LEARN.glob(f"{key.partition('-')[0]}-*.md")  # 04b-..., 02-budget: 02-...
    text = chapter.read_text(encoding="utf-8").partition("\n## Exercise")[2]
    assert text, f"{chapter.name} has no '## Exercise' section"
    assert f"python -m course.check {key}`" in text, f"{chapter.name}: no check for {key}"
    if exercise.kind == "break":
        test = exercise.test
        assert f"`{test}`" in text, f"{chapter.name}: exercise does not name {test}"


def test_harness_cleans_up(dsn: str) -> None:
    # Harness is the matrix's scenario runner; the checks reuse it.
    with Harness(
        Subject("x", "x", _course(importlib.import_module("course.step3_condition").ConditionPool)),
        dsn,
    ) as h:
        pool = h.make(0, 1)
        h.get(pool)
    assert h.probe.open == 0
