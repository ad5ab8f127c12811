"""Check an exercise of the course against *your* edit: ``python -m course.check NN``.

Each chapter of docs/learn/ ends with exercises. A *break it* exercise asks you to make one
small edit to the chapter's module that breaks a property; its check runs the test the
chapter names against the module as it now is in your working tree, and is done when that
test fails (the way the chapter says it will: a typo that stops the module from working
does not count). A *build it* exercise asks you to add what the step lacks; its check runs
the same property checks as the properties matrix (tests/course_support.py) against your
class, and is done when the property you added holds and the ones the step already had
still hold.

    python -m course.check              # list the exercises
    python -m course.check 03 03-fifo   # check one or more
    python -m course.check 03 --reset   # put the exercise's file back (git checkout)

The check runs in a fresh process, so it always sees the file as you saved it. It needs the
test tools (``PGPOOL_EXTRAS=test``) and a server: ``PGPOOL_DSN``, or a throwaway embedded
one. Exit status 0 when every exercise named is done, 1 when one is not yet, 2 when a file
does not even import.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Exercise:
    key: str  # what you type: "03", "03-fifo"
    kind: str  # "break" or "build"
    files: tuple[str, ...]  # what the exercise edits, relative to the repository
    task: str  # one line: what to do
    test: str  # what the check runs, as the chapter names it
    run: Callable[[str], None]  # raises when the test fails
    # break it: the failures that count (anything else is a mistake in the edit)
    counts: tuple[str, ...] = ()
    note: str = ""  # printed when done


class PropertyFailed(AssertionError):
    """A property check of the matrix returned FAIL."""


def _harness() -> Any:
    """tests/course_support.py, the matrix's checks (imported late: it imports the steps)."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("course_support")


def _steps() -> Any:
    _harness()
    return importlib.import_module("test_course_steps")


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


def _cell(prop: str, subject: Any, dsn: str) -> None:
    """One cell of the matrix: property `prop` on `subject`; raise unless it passes."""
    support = _harness()
    check = next(p for p in support.PROPERTIES if p.key == prop)
    outcome = check.check(subject, dsn)
    if outcome.verdict != "pass":
        raise PropertyFailed(f"{check.title}: {outcome.verdict} {outcome.detail}".rstrip())


def _course_subject(module: str, cls: str, maintains: bool = False) -> Any:
    support = _harness()
    pool_class = getattr(_module(module), cls)
    make = support._course(pool_class, maintains)
    return support.Subject(module, cls, make, maintains=maintains)


def _cells(module: str, cls: str, props: tuple[str, ...], maintains: bool = False) -> Any:
    def run(dsn: str) -> None:
        subject = _course_subject(module, cls, maintains)
        for prop in props:
            _cell(prop, subject, dsn)

    return run


def _pgpool_cell(prop: str) -> Callable[[str], None]:
    def run(dsn: str) -> None:
        support = _harness()
        _cell(prop, next(s for s in support.SUBJECTS if s.key == "pgpool"), dsn)

    return run


def _named(test: str, module: str) -> Callable[[str], None]:
    def run(dsn: str) -> None:
        getattr(_steps(), test)(dsn, _module(module))

    return run


def _slow_ring(module: str, cls: str) -> Callable[[str], None]:
    def run(dsn: str) -> None:
        import pytest

        with pytest.MonkeyPatch.context() as monkeypatch:
            _steps().test_handoff_survives_a_slow_ring(dsn, _module(module), cls, monkeypatch)

    return run


STEPS = "tests/test_course_steps.py::"
CELL = "tests/test_course_properties.py::test_property"

EXERCISES = (
    Exercise(
        "00",
        "break",
        ("course/step0_why.py",),
        "NoPool.putconn: replace conn.close() with pass",
        STEPS + "test_nopool_closes_what_it_opens",
        _named("test_nopool_closes_what_it_opens", "course.step0_why"),
        counts=("AssertionError",),
    ),
    Exercise(
        "01",
        "break",
        ("course/step1_seed.py",),
        "DBHelper.get_resource: delete self._connection_pool.putconn(conn)",
        STEPS + "test_dbhelper_returns_its_connection",
        _named("test_dbhelper_returns_its_connection", "course.step1_seed"),
        counts=("PoolError",),
    ),
    Exercise(
        "02",
        "break",
        ("course/step2_queue.py",),
        "QueuePool.getconn: replace self._tokens.put(None) in the except block with pass",
        STEPS + "test_queue_pool_failed_connect_gives_its_token_back",
        _named("test_queue_pool_failed_connect_gives_its_token_back", "course.step2_queue"),
        counts=("PoolTimeout",),
    ),
    Exercise(
        "02-budget",
        "build",
        ("course/step2_queue.py",),
        "give QueuePool a max_connecting=2 budget: at most 2 connects in flight at once",
        "the matrix's rows connect_budget, bounded, waits, unlocked_connect, no_churn",
        _cells(
            "course.step2_queue",
            "QueuePool",
            ("connect_budget", "bounded", "waits", "unlocked_connect", "no_churn"),
        ),
    ),
    Exercise(
        "03",
        "break",
        ("course/step3_condition.py",),
        "ConditionPool.putconn: replace self._can_proceed.notify() with pass",
        CELL + "[waits-step3]",
        _cells("course.step3_condition", "ConditionPool", ("waits",)),
        counts=("PropertyFailed",),
    ),
    Exercise(
        "03-fifo",
        "build",
        ("course/step3_condition.py",),
        "make ConditionPool first come, first served, still with one Condition",
        "the matrix's rows fifo, bounded, exclusive, waits, close_wakes, no_churn",
        _cells(
            "course.step3_condition",
            "ConditionPool",
            ("fifo", "bounded", "exclusive", "waits", "close_wakes", "no_churn"),
        ),
    ),
    Exercise(
        "04",
        "break",
        ("course/step4_fifo.py",),
        "FifoPool.putconn: swap waiter.conn = conn and waiter.ring()",
        STEPS + "test_handoff_survives_a_slow_ring",
        _slow_ring("course.step4_fifo", "FifoPool"),
        counts=("AssertionError",),
    ),
    Exercise(
        "04b",
        "break",
        ("course/step4b_barging.py",),
        "BargingPool._starving: return False (never stop barging)",
        STEPS + "test_barging_pool_serves_a_starving_waiter",
        _named("test_barging_pool_serves_a_starving_waiter", "course.step4b_barging"),
        counts=("AssertionError",),
    ),
    Exercise(
        "05",
        "break",
        ("course/step5_reserve.py",),
        "ReservePool.getconn: drop self._size -= 1 after a failed connect",
        STEPS + "test_failed_connect_frees_its_slot",
        _named("test_failed_connect_frees_its_slot", "course.step5_reserve"),
        counts=("PoolTimeout",),
        note=(
            "step 6's MaintainedPool inherits from ReservePool, so step 6 now leaks slots"
            " too: put the file back before chapter 6 (python -m course.check 05 --reset)"
        ),
    ),
    Exercise(
        "06",
        "break",
        ("course/step6_maintained.py",),
        "MaintainedPool.getconn: replace if self._still_good(conn): with if True:",
        CELL + "[live-step6]",
        _cells("course.step6_maintained", "MaintainedPool", ("live",), maintains=True),
        counts=("PropertyFailed",),
    ),
    Exercise(
        "06-clean",
        "build",
        ("course/step6_maintained.py",),
        "make MaintainedPool hand out clean connections: roll back returns, outside the lock",
        "the matrix's rows clean_return, waits, fifo, unlocked_connect, live, reaps_idle, reclaims",
        _cells(
            "course.step6_maintained",
            "MaintainedPool",
            ("clean_return", "waits", "fifo", "unlocked_connect", "live", "reaps_idle", "reclaims"),
            maintains=True,
        ),
    ),
    Exercise(
        "07",
        "break",
        ("pgpool/state.py",),
        "PoolState.give_back: delete if self.waiters: and the return under it",
        CELL + "[waits-pgpool]",
        _pgpool_cell("waits"),
        counts=("PropertyFailed",),
    ),
)
BY_KEY = {exercise.key: exercise for exercise in EXERCISES}


@dataclass(frozen=True)
class Verdict:
    done: bool
    line: str  # what the learner reads


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def judge(exercise: Exercise, dsn: str) -> Verdict:
    """Run `exercise`'s check on the files as they are now, and say whether it is done."""
    try:
        exercise.run(dsn)
    except Exception as error:
        seen = _first_line(error)
        if exercise.kind == "build":
            return Verdict(False, f"a property does not hold yet: {seen}")
        if type(error).__name__ in exercise.counts:
            return Verdict(True, f"the test now fails, as the chapter says: {seen}")
        return Verdict(
            False,
            f"the test fails, but not the way the chapter says ({seen});"
            f" expected {' or '.join(exercise.counts)}: check your edit for a typo",
        )
    if exercise.kind == "build":
        return Verdict(True, "every property checked holds")
    return Verdict(False, f"{exercise.test} still passes on {', '.join(exercise.files)}")


def reset(exercise: Exercise) -> int:
    """Put the exercise's files back as the last commit has them."""
    command = ["git", "-C", str(ROOT), "checkout", "--", *exercise.files]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        print(f"could not restore {', '.join(exercise.files)}: {result.stderr.strip()}")
        return 1
    print(f"restored {', '.join(exercise.files)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course.check", description=__doc__)
    parser.add_argument("exercises", nargs="*", metavar="NN", help="e.g. 03 or 03-fifo")
    parser.add_argument("--reset", action="store_true", help="restore the exercises' files")
    args = parser.parse_args(argv)
    unknown = [key for key in args.exercises if key not in BY_KEY]
    if unknown or not args.exercises:
        if unknown:
            print(f"no such exercise: {', '.join(unknown)}")
        for exercise in EXERCISES:
            print(f"{exercise.key:10} {exercise.kind} it: {exercise.task}")
        return 1 if unknown else 0
    chosen = [BY_KEY[key] for key in args.exercises]
    if args.reset:
        return max(reset(exercise) for exercise in chosen)
    try:
        _harness()  # imports every course step: a file that does not import stops here
    except ModuleNotFoundError as error:
        if error.name and error.name.partition(".")[0] not in {"course", "pgpool"}:
            print(f"the check needs the test tools ({error.name} is missing): run")
            print("  PGPOOL_EXTRAS=test bash -c 'source scripts/_venv.sh'")
            return 2
        print(f"a file does not import: {_first_line(error)}")
        return 2
    except Exception as error:
        print(f"a file does not import: {_first_line(error)}")
        return 2
    from ._common import server

    status = 0
    with server() as dsn:
        for exercise in chosen:
            with contextlib.redirect_stderr(sys.stdout):
                verdict = judge(exercise, dsn)
            mark = "done" if verdict.done else "not yet"
            print(f"[{mark}] {exercise.key} ({exercise.kind} it: {exercise.task})")
            print(f"    {verdict.line}")
            if verdict.done and exercise.note:
                print(f"    note: {exercise.note}")
            status = status if verdict.done else 1
    return status


if __name__ == "__main__":
    sys.exit(main())
