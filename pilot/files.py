"""A job's files: its outputs found in its directory after the payload ended (only regular files
reached without following any symlink: every directory and file is opened relative to its
parent with O_NOFOLLOW), uploaded in chunks that resume where the controller says; its input
sandboxes fetched once per machine (checked by SHA-256) and copied in."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from pilot.client import ClientError

NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_GUARD = threading.Lock()
_FETCHING: dict[str, threading.Lock] = {}  # a lock per sandbox being fetched
CHUNK = 8 << 20  # the controller's chunk (a declaration's answer says it)
OWN = (".stdout", ".stderr", ".progress")


def collect(dirfd: int, patterns: list[str], max_bytes: int,
            max_count: int) -> tuple[list[tuple[str, int, str, int]], list[dict[str, Any]]]:
    """The job directory's regular files matching `patterns` as (name, size, sha256, fd), in
    name order, within the limits; and those left out with why."""
    found: list[tuple[str, int, str, int]] = []
    skipped: list[dict[str, Any]] = []
    total = 0
    for top, _dirs, names, fd in os.fwalk(".", dir_fd=dirfd, follow_symlinks=False):
        for n in sorted(names):
            name = os.path.normpath(os.path.join(top, n))
            if name in OWN or not any(fnmatch.fnmatchcase(name, p) for p in patterns):
                continue
            try:
                f = os.open(n, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW, dir_fd=fd)
            except OSError as e:
                skipped.append({"name": name, "size": 0, "why": f"not read: {e.strerror}"})
                continue
            st = os.fstat(f)
            why = ("not a regular file" if not stat.S_ISREG(st.st_mode) else
                   f"over max_output_files ({max_count})" if len(found) >= max_count else
                   "over max_output_files_bytes" if total + st.st_size > max_bytes else None)
            if why:
                os.close(f)
                skipped.append({"name": name, "size": st.st_size, "why": why})
                continue
            h = hashlib.sha256()
            at = 0
            while piece := os.pread(f, 1 << 20, at):
                h.update(piece)
                at += len(piece)
            total += at
            found.append((name, at, h.hexdigest(), f))
    return found, skipped


def upload(client: Any, base: str, attempt: int, dirfd: int, patterns: list[str],
           limits: dict[str, int]) -> str | None:
    """Send the job's output files to `base` (…/jobs/ID); what went wrong, if anything."""
    found, skipped = collect(dirfd, patterns, limits.get("max_output_files_bytes", 1 << 62),
                             limits.get("max_output_files", 100))
    try:
        if not found and not skipped:
            return None
        if not skipped and all(size <= CHUNK for _, size, _, _ in found):
            try:  # each file in one request, declared by its only chunk
                for name, size, h, f in found:
                    client.call("PUT", f"{base}/files/{urllib.parse.quote(name)}?attempt="
                                f"{attempt}&size={size}&sha256={h}", os.pread(f, size, 0))
                return None
            except ClientError as e:
                if e.status != 409:  # another chunk size: declared, then sent in its chunks
                    raise
        out = client.call("POST", base + "/files", {
            "attempt": attempt, "skipped": skipped,
            "files": [{"name": n, "size": s, "sha256": h} for n, s, h, _ in found]})
        have = {f["name"]: f for f in out["files"]}
        for name, size, _h, f in found:
            at = 0 if have[name]["complete"] else have[name]["received"]
            url = f"{base}/files/{urllib.parse.quote(name)}?attempt={attempt}&offset="
            while not have[name]["complete"]:
                data = os.pread(f, out["chunk"], at)
                have[name] = client.call("PUT", url + str(at), data)
                at += len(data)
                if at >= size and not have[name]["complete"]:
                    return f"{name} was not completed"
        return None
    finally:
        for *_, f in found:
            os.close(f)


def fetch_sandbox(client: Any, cache: Path, sha256: str) -> Path:
    """The sandbox's bytes in this machine's cache (fetched the first time, checked)."""
    path = cache / sha256
    with _GUARD:
        lock = _FETCHING.setdefault(sha256, threading.Lock())
    with lock:  # jobs starting at once on this machine fetch it once
        if path.exists():
            return path
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = client.call("GET", f"/api/v1/sandboxes/{sha256}", raw=True)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"sandbox {sha256}: the bytes fetched do not match their SHA-256")
        part = cache / f".{sha256}.{os.getpid()}"
        part.write_bytes(data)
        os.replace(part, path)
        return path

