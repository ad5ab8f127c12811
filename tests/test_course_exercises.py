"""Exercises that stay true: each chapter's exercise names a mutation and the test that
catches it; here each mutation is applied and the named test must fail.

A mutation is a one-place source edit of a course module (the exact text must occur once,
so a change to the module that moves it fails here first, and the exercise is updated
with it). The mutated module is built from the edited source under the original's name,
then handed to the named test: a test function of tests/test_course_steps.py that takes
the module, or one cell of the properties matrix, run on the mutated pool class.
"""

from __future__ import annotations

import importlib
import inspect
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import test_course_steps as steps
from course_support import PROPERTIES, SUBJECTS, Harness, Subject, _course

ROOT = Path(__file__).resolve().parent.parent
LEARN = ROOT / "docs" / "learn"


@dataclass(frozen=True)
class Mutation:
    chapter: str  # the chapter file's number prefix, e.g. "04"
    module: str  # e.g. "course.step4_fifo"
    old: str  # exact source text, found once
    new: str
    test: str  # the test the exercise names, as the chapter writes it
    method: str = ""  # "Class.method": mutate only this method of an installed module

    def apply(self) -> ModuleType:
        original = importlib.import_module(self.module)
        path = Path(original.__file__ or "")
        source = path.read_text(encoding="utf-8")
        assert source.count(self.old) == 1, f"{self.module}: mutation site not found once"
        mutated = ModuleType(self.module)
        mutated.__file__ = str(path)
        mutated.__package__ = self.module.rpartition(".")[0]
        code = compile(source.replace(self.old, self.new), str(path), "exec")
        exec(code, mutated.__dict__)
        return mutated

    def patch_method(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Replace one method of the real module's class with its mutated source."""
        module = importlib.import_module(self.module)
        cls_name, name = self.method.split(".")
        cls = getattr(module, cls_name)
        source = textwrap.dedent(inspect.getsource(getattr(cls, name)))
        assert source.count(self.old) == 1, f"{self.method}: mutation site not found once"
        namespace = dict(module.__dict__)
        exec(compile(source.replace(self.old, self.new), self.module, "exec"), namespace)
        monkeypatch.setattr(cls, name, namespace[name])


MUTATIONS = (
    Mutation(
        "00",
        "course.step0_why",
        "    def putconn(self, conn: Any) -> None:\n        conn.close()",
        "    def putconn(self, conn: Any) -> None:\n        pass",
        "tests/test_course_steps.py::test_nopool_closes_what_it_opens",
    ),
    Mutation(
        "01",
        "course.step1_seed",
        "            cursor.close()\n            self._connection_pool.putconn(conn)",
        "            cursor.close()",
        "tests/test_course_steps.py::test_dbhelper_returns_its_connection",
    ),
    Mutation(
        "02",
        "course.step2_queue",
        "            self._tokens.put(None)  # give the right to connect back",
        "            pass  # give the right to connect back",
        "tests/test_course_steps.py::test_queue_pool_failed_connect_gives_its_token_back",
    ),
    Mutation(
        "03",
        "course.step3_condition",
        "                self._can_proceed.notify()",
        "                pass",
        "tests/test_course_properties.py::test_property[waits-step3]",
    ),
    Mutation(
        "04",
        "course.step4_fifo",
        "                waiter.conn = conn\n                waiter.ring()",
        "                waiter.ring()\n                waiter.conn = conn",
        "tests/test_course_steps.py::test_handoff_survives_a_slow_ring",
    ),
    Mutation(
        "05",
        "course.step5_reserve",
        "                self._size -= 1\n                self._connecting -= 1\n",
        "                self._connecting -= 1\n",
        "tests/test_course_steps.py::test_failed_connect_frees_its_slot",
    ),
    Mutation(
        "06",
        "course.step6_maintained",
        "            if self._still_good(conn):",
        "            if True:",
        "tests/test_course_properties.py::test_property[live-step6]",
    ),
    Mutation(
        "07",
        "pgpool.state",
        "    if self.waiters:\n        return self._hand_over(slot, now)\n",  # dedented
        "",
        "tests/test_course_properties.py::test_property[waits-pgpool]",
        method="PoolState.give_back",
    ),
)

# A property cell's test id -> (property key, the class name in the mutated module).
CELL = re.compile(r"test_property\[(?P<prop>\w+)-(?P<step>step\d|pgpool)\]$")
CLASSES = {
    "step3": "ConditionPool",
    "step6": "MaintainedPool",
}


def run_named_test(mutation: Mutation, module: ModuleType, dsn: str, monkeypatch: Any) -> None:
    """Run the test the exercise names, against `module`; raise if it fails."""
    cell = CELL.search(mutation.test)
    if cell and cell["step"] == "pgpool":  # the method is patched in place: the real subject
        subject = next(s for s in SUBJECTS if s.key == "pgpool")
        outcome = next(p for p in PROPERTIES if p.key == cell["prop"]).check(subject, dsn)
        assert outcome.verdict == "pass", outcome.detail
        return
    if cell:
        cls = getattr(module, CLASSES[cell["step"]])
        maintains = cell["step"] == "step6"
        subject = Subject(cell["step"], "mutant", _course(cls, maintains), maintains=maintains)
        prop = next(p for p in PROPERTIES if p.key == cell["prop"])
        outcome = prop.check(subject, dsn)
        assert outcome.verdict == "pass", outcome.detail
        return
    test: Callable[..., None] = getattr(steps, mutation.test.rpartition("::")[2])
    if test is steps.test_handoff_survives_a_slow_ring:
        name = "FifoPool" if hasattr(module, "FifoPool") else "ReservePool"
        test(dsn, module, name, monkeypatch)
    else:
        test(dsn, module)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.chapter)
def test_the_named_test_passes_on_the_real_module(
    mutation: Mutation, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Guards the harness: a named test that failed on the real code would prove nothing.
    run_named_test(mutation, importlib.import_module(mutation.module), dsn, monkeypatch)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.chapter)
def test_the_named_test_catches_the_mutation(
    mutation: Mutation, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if mutation.method:
        mutation.patch_method(monkeypatch)
        mutated = importlib.import_module(mutation.module)
    else:
        mutated = mutation.apply()
    with pytest.raises(Exception):  # noqa: B017 (any failure of the named test counts)
        run_named_test(mutation, mutated, dsn, monkeypatch)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.chapter)
def test_the_chapter_states_the_mutation_and_its_test(mutation: Mutation) -> None:
    (chapter,) = LEARN.glob(f"{mutation.chapter}-*.md")
    text = chapter.read_text(encoding="utf-8")
    exercise = text.partition("## Exercise")[2]
    assert exercise, f"{chapter.name} has no '## Exercise' section"
    assert f"`{mutation.test}`" in exercise, f"{chapter.name}: exercise does not name the test"


def test_harness_cleans_up(dsn: str) -> None:
    # Harness is the matrix's scenario runner; the exercises reuse it through the checks.
    with Harness(
        Subject("x", "x", _course(importlib.import_module("course.step3_condition").ConditionPool)),
        dsn,
    ) as h:
        pool = h.make(0, 1)
        h.get(pool)
    assert h.probe.open == 0
