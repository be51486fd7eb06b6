"""bench.faults' scenarios, smaller, as tests: a fault must lose no acknowledged job, run no
job twice at once and double no submission (each under a minute)."""

from __future__ import annotations

from pathlib import Path

from bench.faults import controller_sigkill, killed_between_commit_and_answer


def check(row) -> None:
    assert row.submitted > 0
    assert (row.lost, row.ran_twice_at_once, row.duplicate_completions,
            row.duplicate_submissions) == (0, 0, 0, 0), row
    assert row.done == row.submitted


def test_a_controller_killed_between_commit_and_answer_doubles_no_submission(tmp_path: Path):
    row = killed_between_commit_and_answer(tmp_path, 40)
    assert row.note == "answers dropped: 1"  # the fault did happen
    check(row)


def test_controller_sigkills_during_a_run_lose_and_double_nothing(tmp_path: Path):
    check(controller_sigkill(tmp_path, 60))
