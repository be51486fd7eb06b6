"""Job files' rules (controller/domain/files.py) and the pilot's search of a job directory
(pilot/files.py collect): names inside the job only, one Range, chunks on the grid, the quota;
regular files reached without following a symlink, within the limits."""

from __future__ import annotations

import hashlib
import os

import pytest

from controller.domain.files import (
    CHUNK,
    BadName,
    BadRange,
    byte_range,
    check_name,
    chunk_at,
    over_quota,
)
from pilot.files import collect


@pytest.mark.parametrize("name", ["a.txt", "plots/a.png", "a b", "x/y/z.csv", ".hidden",
                                  "plots/*.png", "r[0-9].csv"])
def test_names_inside_the_job_directory(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "/etc/passwd", "../x", "a/../../b", "a//b", ".", "./a",
                                  "a/.", ".stdout", ".stderr.x", ".progress", "a\\b", "a\0b",
                                  "a\nb", "x" * 256])
def test_names_outside_it_or_the_pilots_are_refused(name):
    with pytest.raises(BadName):
        check_name(name)


def test_one_range_of_bytes():
    assert byte_range(None, 10) is None
    assert byte_range("bytes=0-3", 10) == (0, 3)
    assert byte_range("bytes=5-", 10) == (5, 9)
    assert byte_range("bytes=4-100", 10) == (4, 9)  # clipped to the file
    assert byte_range("bytes=-3", 10) == (7, 9)
    assert byte_range("bytes=-30", 10) == (0, 9)
    for bad in ("bytes=10-", "bytes=5-2", "bytes=-0", "bytes=0-1,3-4", "items=0-1", "bytes=-"):
        with pytest.raises(BadRange):
            byte_range(bad, 10)
    with pytest.raises(BadRange):
        byte_range("bytes=-1", 0)


def test_chunks_land_on_the_grid_in_order():
    size = CHUNK + 10
    assert chunk_at(0, 0, size, CHUNK) is None
    assert chunk_at(0, CHUNK, size, CHUNK) is None  # sent again: accepted
    assert chunk_at(CHUNK, CHUNK, size, 10) is None
    assert "missing" in (chunk_at(CHUNK, 0, size, 10) or "")
    assert "multiple" in (chunk_at(5, 0, size, 10) or "")
    assert "bytes, not" in (chunk_at(0, 0, size, 5) or "")
    assert chunk_at(0, 0, 0, 0) is None  # an empty file: one empty chunk


def test_the_quota():
    assert over_quota(10, 5, None) is None
    assert over_quota(10, 5, 15) is None
    assert "quota" in (over_quota(10, 6, 15) or "")


def test_the_pilot_finds_regular_files_and_follows_no_symlink(tmp_path):
    job = tmp_path / "job"
    (job / "plots").mkdir(parents=True)
    (job / "a.csv").write_text("a\n")
    (job / "plots" / "p.png").write_bytes(b"png")
    (job / "plots" / "big.png").write_bytes(b"x" * 100)
    (job / ".stdout").write_text("pilot's own")
    secret = tmp_path / "secret.csv"
    secret.write_text("not the job's")
    (job / "leak.csv").symlink_to(secret)
    (job / "linked").symlink_to(tmp_path)  # a directory outside: not entered
    os.mkfifo(job / "pipe.csv")  # would block a reader: not read
    fd = os.open(job, os.O_RDONLY | os.O_DIRECTORY)
    try:
        found, skipped = collect(fd, ["*.csv", "plots/*", "linked/*", ".stdout"], 50, 10)
        assert [(n, s, h) for n, s, h, _ in found] == [
            ("a.csv", 2, hashlib.sha256(b"a\n").hexdigest()),
            ("plots/p.png", 3, hashlib.sha256(b"png").hexdigest())]
        why = {s["name"]: s["why"] for s in skipped}
        assert why["plots/big.png"] == "over max_output_files_bytes"
        assert why["leak.csv"].startswith("not read") and why["pipe.csv"] == \
            "not a regular file"
        assert not any(n.startswith("linked") for n in why)
        for *_, f in found:
            os.close(f)
        found, skipped = collect(fd, ["*.csv", "plots/*"], 1 << 20, 1)
        assert [n for n, *_ in found] == ["a.csv"]
        assert {s["why"] for s in skipped} >= {"over max_output_files (1)"}
        for *_, f in found:
            os.close(f)
    finally:
        os.close(fd)


def test_live_output_is_what_came_since_the_last_time_bounded_and_whole_characters(tmp_path):
    from pilot.runner import JobRun
    from pilot.sandbox import Sandbox

    (tmp_path / "work").mkdir()
    run = JobRun({"id": 3, "executable": "/bin/true", "requirements": {
        "cores": 1, "memory_mb": 64, "max_runtime": 30}}, "cp_t", tmp_path / "work",
        "http://127.0.0.1:9", sandbox=Sandbox("none"))
    run.prepare()
    out = run.dir / ".stdout"
    try:
        assert run.fresh(100) == ["", ""]
        with open(out, "ab") as f:
            f.write(b"h\xc3")  # an "e acute" cut in two
        assert run.fresh(100) == ["h", ""]
        with open(out, "ab") as f:
            f.write(b"\xa9llo\n")
        assert run.fresh(100) == ["\u00e9llo\n", ""]
        with open(out, "ab") as f:
            f.write(b"x" * 300)
        assert run.fresh(100) == ["[... 200 bytes dropped ...]\n" + "x" * 100, ""]
        os.truncate(out, 0)  # the payload started its output again
        with open(out, "ab") as f:
            f.write(b"new\0")
        assert run.fresh(100) == ["new\ufffd", ""]
    finally:
        run.cleanup()
