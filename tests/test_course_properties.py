"""The properties matrix: every property of tests/course_support.py, against every pool.

Each cell's expected verdict is written below, so the matrix stays true: a change to a
course step or to pgpool that flips a cell fails here, and whoever made it updates the
expectation (and the chapter that tells the story). When every cell has run, the last
test writes docs/learn/properties.md from this run's outcomes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from course_support import PROPERTIES, SUBJECTS, Outcome, Property, Subject

MATRIX = Path(__file__).resolve().parent.parent / "docs" / "learn" / "properties.md"

# pool -> the verdicts of PROPERTIES, in order. P pass, F FAIL, - not applicable.
# Columns: bounded exclusive waits fifo close_wakes unlocked_connect connect_budget no_churn
# reaps_idle live reclaims clean_return.
EXPECTED = {
    "step0":  "F P F - - P F F F P - P",
    "step1":  "P P F - - F P F F F F P",
    "step2":  "P F P F F P F P F F F F",
    "step3":  "P P P F P F P P F F F F",
    "step4":  "P P P P P F P P F F F F",
    "step4b": "P P P F P F P P F F F F",
    "step5":  "P P P P P P P P F F F F",
    "step6":  "P P P P P P P P P P P F",
    "pgpool": "P P P P P P P P P P P P",
}  # fmt: skip
VERDICTS = {"P": "pass", "F": "FAIL", "-": "n/a"}

RESULTS: dict[tuple[str, str], Outcome] = {}


def expected(subject: Subject, prop: Property) -> str:
    letters = EXPECTED[subject.key].split()
    return VERDICTS[letters[[p.key for p in PROPERTIES].index(prop.key)]]


@pytest.mark.parametrize("subject", SUBJECTS, ids=lambda s: s.key)
@pytest.mark.parametrize("prop", PROPERTIES, ids=lambda p: p.key)
def test_property(prop: Property, subject: Subject, dsn: str) -> None:
    outcome = prop.check(subject, dsn)
    RESULTS[prop.key, subject.key] = outcome
    assert outcome.verdict == expected(subject, prop), outcome.detail


def test_write_matrix() -> None:
    """Runs last (file order): writes the matrix if every cell ran and matched."""
    cells = [(p.key, s.key) for p in PROPERTIES for s in SUBJECTS]
    if any(cell not in RESULTS for cell in cells):
        pytest.skip("only part of the matrix ran: docs/learn/properties.md left as it is")
    wrong = [cell for cell in cells if RESULTS[cell].verdict != expected(*_lookup(cell))]
    assert not wrong, f"cells not as expected, matrix not written: {wrong}"
    MATRIX.write_text(render(), encoding="utf-8")


def _lookup(cell: tuple[str, str]) -> tuple[Subject, Property]:
    prop = next(p for p in PROPERTIES if p.key == cell[0])
    subject = next(s for s in SUBJECTS if s.key == cell[1])
    return subject, prop


def render() -> str:
    lines = [
        "# The properties matrix",
        "",
        "<!-- Written by tests/test_course_properties.py on every full run; do not edit. -->",
        "",
        "One property suite (tests/course_support.py), run against every pool of the course",
        "and against pgpool on the test server. A cell is **FAIL** when the suite caught",
        'the pool breaking the property; the note under the table says how. "n/a": the',
        "property's premise cannot arise (a pool that never makes anyone wait cannot be",
        "unfair to a waiter). The two first rows come from a Hypothesis state machine",
        "(getconn, putconn, and putconn of a connection already returned); their notes show",
        "its shrunk counterexample. The test asserts every cell, so this page stays true.",
        "",
        "| property | " + " | ".join(s.title for s in SUBJECTS) + " |",
        "|---|" + "---|" * len(SUBJECTS),
    ]
    notes: list[str] = []
    for prop in PROPERTIES:
        row = []
        for subject in SUBJECTS:
            outcome = RESULTS[prop.key, subject.key]
            if outcome.verdict == "FAIL":
                notes.append(f"{subject.title}, {prop.title}: {outcome.detail}")
                row.append(f"**FAIL** [{len(notes)}]")
            else:
                row.append(outcome.verdict)
        lines.append(f"| {prop.title} | " + " | ".join(row) + " |")
    lines += ["", "## What each row checks", ""]
    for prop in PROPERTIES:
        doc = " ".join((prop.check.__doc__ or "").split())
        lines.append(f"- **{prop.title}**: {doc} (`{prop.check.__name__}`)")
    lines += ["", "## How each failure was caught", ""]
    lines += [f"{number}. {note}" for number, note in enumerate(notes, 1)]
    lines += [
        "",
        "Run it again: `.venv/bin/pytest tests/test_course_properties.py`.",
        "",
    ]
    return "\n".join(lines)


# Where a chapter names the matrix's rows a pool fails: (chapter, the paragraph's first
# words, the pools it speaks of). The rows it quotes must be exactly those they all fail.
CHAPTER_CLAIMS = [
    ("00-why-pool.md", "**Next:** keep the connections", ("step0",)),
    ("05-reserve-connect.md", "**Next:** this pool never looks", ("step1", "step2", "step3",
                                                                  "step4", "step4b", "step5")),
]  # fmt: skip


@pytest.mark.parametrize(("chapter", "start", "pools"), CHAPTER_CLAIMS)
def test_chapter_names_the_rows_the_matrix_fails(
    chapter: str, start: str, pools: tuple[str, ...]
) -> None:
    text = (MATRIX.parent / chapter).read_text(encoding="utf-8")
    paragraph = text.partition(start)[2].partition("\n\n")[0]
    assert paragraph, f"{chapter}: no paragraph starting {start!r}"
    titles = {p.title for p in PROPERTIES}
    quoted = {title for title in titles if f'"{title}"' in paragraph.replace("\n", " ")}
    failing = {
        p.title
        for p in PROPERTIES
        if all(expected(next(s for s in SUBJECTS if s.key == k), p) == "FAIL" for k in pools)
    }
    assert quoted == failing, (
        f"{chapter} names {sorted(quoted)}, the matrix fails {sorted(failing)}"
    )
