"""bench.faults' scenarios, smaller, as tests: a fault must lose no acknowledged job, run no
job twice at once and double no submission (each under a minute)."""

from __future__ import annotations

from pathlib import Path

from bench.faults import (
    controller_frozen,
    controller_sigkill,
    killed_between_commit_and_answer,
    pilots_faulted,
)


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
    check(controller_sigkill(tmp_path, 40, every=1.5))


def test_pilots_frozen_mid_job_lose_nothing_and_never_overlap(tmp_path: Path):
    """SIGSTOP, the hardest of the pilot faults (SIGKILL and SIGTERM: test_attempts.py)."""
    row = pilots_faulted(tmp_path, 40, "SIGSTOP")
    # a payload that finished while its pilot was frozen may run again (at least once), but
    # never beside another attempt
    assert (row.lost, row.ran_twice_at_once, row.duplicate_submissions) == (0, 0, 0), row
    assert row.done == row.submitted == 40


def test_a_controller_frozen_longer_than_a_lease_loses_nothing_and_never_overlaps(
        tmp_path: Path):
    row = controller_frozen(tmp_path, 24)
    # payloads that finished while it was frozen may run again (at least once), never twice
    # at once
    assert (row.lost, row.ran_twice_at_once, row.duplicate_submissions) == (0, 0, 0), row
    assert row.done == row.submitted == 24
