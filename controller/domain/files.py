"""Job files (output sandboxes) and input sandboxes: the rules, as plain functions over plain
data (no I/O; time is passed in).

A job's output file is named by its path inside the job directory ("result.csv",
"plots/a.png"): never absolute, never `..`, no empty or `.` component, no control character.
Files are uploaded in chunks of CHUNK bytes at offsets that are multiples of CHUNK, so a chunk
sent again (a retry, a resumed upload) lands where it did the first time."""

from __future__ import annotations

import re
from dataclasses import dataclass

CHUNK = 8 * 1024 * 1024  # an upload's chunk (S3's multipart parts must be >= 5 MiB)
MAX_NAME = 255
MAX_PATTERNS = 64
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


class BadName(ValueError):
    """Not a name of a file inside a job directory."""


def check_name(name: str) -> str:
    """The name if it is a relative path inside a job directory; else BadName saying why."""
    if not name or len(name.encode()) > MAX_NAME:
        raise BadName(f"a file name has 1 to {MAX_NAME} bytes")
    if _BAD_CHARS.search(name):
        raise BadName("a file name has no control character or backslash")
    if name.startswith("/"):
        raise BadName(f"{name!r} is absolute: name a file inside the job directory")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise BadName(f"{name!r} has an empty, '.' or '..' component")
    if parts[0].startswith(".std") or parts[0] == ".progress":
        raise BadName(f"{name!r} is the pilot's own file")
    return name


def check_pattern(pattern: str) -> str:
    """An output pattern: a name, or a glob (`*`, `?`, `[...]`) in the same form."""
    return check_name(pattern)


def check_sha256(digest: str) -> str:
    if not SHA256.match(digest):
        raise BadName("a SHA-256 is 64 lower-case hex digits")
    return digest


class BadRange(ValueError):
    """A Range header this file cannot satisfy."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) bytes a `Range: bytes=...` header asks for (one range: a start-end,
    a start- or a -suffix), None for the whole file; BadRange when it cannot be satisfied."""
    if header is None:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if m is None or (m.group(1) == "" and m.group(2) == ""):
        raise BadRange(f"only one range of bytes is served (bytes=first-last), not {header!r}")
    first_s, last_s = m.groups()
    if first_s == "":  # the last N bytes
        n = int(last_s)
        if n == 0 or size == 0:
            raise BadRange(f"an empty suffix of a {size}-byte file")
        return max(0, size - n), size - 1
    first = int(first_s)
    last = size - 1 if last_s == "" else min(int(last_s), size - 1)
    if first >= size or last < first:
        raise BadRange(f"bytes {first}-{last_s} are not inside a {size}-byte file")
    return first, last


@dataclass(frozen=True)
class Declared:
    """A file a pilot is about to upload."""

    name: str
    size: int
    sha256: str


def over_quota(used: int, adding: int, quota: int | None) -> str | None:
    """Why storing `adding` more bytes for an owner who holds `used` is refused, if it is."""
    if quota is None or used + adding <= quota:
        return None
    return (f"the owner's file quota is full: {used} bytes stored, {adding} more would pass "
            f"its {quota} bytes; download and let old outputs expire, or ask an admin for more")


def chunk_at(offset: int, received: int, size: int, length: int) -> str | None:
    """Why a chunk of `length` bytes at `offset` of a file of `size` bytes, of which the
    first `received` are stored, is refused, if it is (a chunk already stored is accepted
    again: a retry)."""
    if offset % CHUNK:
        return f"a chunk starts at a multiple of {CHUNK} bytes, not at {offset}"
    if offset > received:
        return f"bytes {received}-{offset - 1} are missing: send from {received}"
    want = min(CHUNK, size - offset)
    if length != want:
        return f"the chunk at {offset} of a {size}-byte file has {want} bytes, not {length}"
    return None


def expired(stored_at: float, keep: float, now: float) -> bool:
    return now > stored_at + keep
