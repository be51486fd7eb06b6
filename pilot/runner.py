"""Run one job: prepare its working directory, start the payload in its sandbox with a time
limit, stop it on request, collect the tail of its output.

The job directory is made fresh by the pilot (an existing one is refused: nothing planted there
is followed), and every file the pilot opens in it is opened relative to that directory
without following symlinks (O_NOFOLLOW), so a payload cannot make the pilot write or read
anywhere else."""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilot import shepherd
from pilot.client import Client
from pilot.files import fetch_sandbox
from pilot.sandbox import Sandbox
from pilot.urls import open_url


@dataclass
class Outcome:
    status: str  # done | failed | interrupted
    exit_code: int | None
    reason: str | None


def _tail(fd: int, limit: int) -> tuple[str, bool]:
    """The last `limit` bytes of an open file, as text."""
    size = os.fstat(fd).st_size
    start = max(0, size - limit)
    raw = os.pread(fd, size - start, start)
    text = raw.decode(errors="replace").replace("\0", "\ufffd")  # the controller takes no NUL
    if len(text.encode()) > limit:  # replacement characters can make text longer than bytes
        text = text.encode()[-limit:].decode(errors="ignore")
    return text, size > limit


NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class JobRun:
    """One running job. `stop(why)` asks it to end: 'killed', 'interrupted' or 'timeout'."""

    def __init__(self, job: dict[str, Any], token: str, workdir: Path, controller_url: str,
                 stop_grace: float = 5.0, sandbox: Sandbox | None = None,
                 own: tuple[str, ...] = (), url_allow: Iterable[str] = ()) -> None:
        self.job = job
        self.id: int = job["id"]
        self.cores: int = job["requirements"]["cores"]
        self.memory_mb: int = job["requirements"]["memory_mb"]
        self.max_runtime: int = job["requirements"]["max_runtime"]
        self.token = token
        self.attempt: int | None = job.get("attempt")
        # one directory per attempt: an earlier attempt's, left by a pilot killed or frozen
        # on this machine, is never in the way (bench.chaos: "exists already" failed the job)
        self.dir = workdir / (f"job-{self.id}" if self.attempt is None
                              else f"job-{self.id}.{self.attempt}")
        self.controller_url = controller_url
        self.stop_grace = stop_grace
        self.sandbox = sandbox or Sandbox("none")
        self.own = own  # the pilot's own paths, hidden from the payload
        self.url_allow = list(url_allow)
        self._dirfd: int | None = None
        self._made = False  # the job directory is ours to remove
        self._out: int | None = None
        self._sent = [0, 0]  # bytes of stdout and stderr sent as live output
        self._utf8 = [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(2)]
        self._err: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None  # the payload's shepherd
        self.lease_until = float("inf")  # Unix time the payload must be dead by, unless renewed
        # a renewal came only after the lease had run out (the pilot frozen, the controller
        # slow): its shepherd may have killed the payload at the old deadline meanwhile
        self.lapsed = False
        self.stop_reason: str | None = None
        self.interrupted_by = "SIGTERM"  # what interrupted the pilot, for the job's record
        self._lock = threading.Lock()

    @property
    def dirfd(self) -> int | None:
        """The job directory, opened (after prepare())."""
        return self._dirfd

    @property
    def progress_file(self) -> Path:
        return self.dir / ".progress"

    def _open(self, name: str, flags: int, mode: int = 0o600) -> int:
        """Open a file of the job directory, never through a symlink."""
        assert self._dirfd is not None, "prepare() first"
        return os.open(name, flags | NOFOLLOW, mode, dir_fd=self._dirfd)

    def progress(self) -> str | None:
        """The last line the payload wrote to its progress file (a regular file only)."""
        if self._dirfd is None:
            return None
        try:
            fd = self._open(".progress", os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            text, _ = _tail(fd, 1000)
            return text.strip() or None
        finally:
            os.close(fd)

    def prepare(self) -> None:
        """Make the job directory (it must not exist) and write the inputs into it."""
        try:
            os.mkdir(self.dir, 0o700)
        except FileExistsError:
            raise FileExistsError(f"the job directory {self.dir} exists already (the pilot "
                                  "makes it fresh; it follows nothing planted there)") from None
        self._made = True
        self._dirfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
        self.sandbox.give(self._dirfd)
        for f in self.job.get("inputs", []):
            name = Path(f["name"]).name
            if name in ("", ".", "..") or name.startswith(".std"):
                raise ValueError(f"input file name {f['name']!r} is not allowed")
            fd = self._open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            with os.fdopen(fd, "wb") as out:
                self.sandbox.give(out.fileno())
                if "content" in f:
                    out.write(f["content"].encode())
                elif "content_b64" in f:
                    try:
                        out.write(base64.b64decode(f["content_b64"], validate=True))
                    except binascii.Error as e:
                        raise ValueError(f"input {name}: invalid base64: {e}") from None
                elif "url" in f:
                    with open_url(f["url"], self.url_allow, timeout=60) as r:
                        shutil.copyfileobj(r, out)
                elif "sandbox" in f:  # fetched once per machine, with the job's token
                    got = fetch_sandbox(Client(self.controller_url, self.token),
                                        self.dir.parent / ".sandboxes", f["sandbox"])
                    with open(got, "rb") as src:
                        shutil.copyfileobj(src, out)
        self._out = self._open(".stdout", os.O_RDWR | os.O_CREAT | os.O_EXCL)
        self._err = self._open(".stderr", os.O_RDWR | os.O_CREAT | os.O_EXCL)
        for fd in (self._out, self._err):
            self.sandbox.give(fd)

    def start(self) -> None:
        env = dict(os.environ)
        for k in [k for k in env if k.startswith("CLOUDPILOT_")]:
            del env[k]  # never hand the pilot's settings to a payload
        env.update(self.job.get("env", {}))
        env.update({
            "CLOUDPILOT_JOB_ID": str(self.id),
            "CLOUDPILOT_JOB_TOKEN": self.token,
            "CLOUDPILOT_URL": self.controller_url,
            "CLOUDPILOT_PROGRESS_FILE": str(self.progress_file),
        })
        exe = self.job["executable"]
        found = (str(self.dir / exe) if "/" in exe else shutil.which(exe, path=env.get("PATH")))
        if found is None or not (os.path.isfile(found) and os.access(found, os.X_OK)):
            # said here, as the job's reason, rather than by the sandbox as an exit code
            raise FileNotFoundError(f"{exe}: no such executable")
        argv = [exe, *self.job.get("arguments", [])]
        # under a shepherd: it ends the payload's processes when the payload ends, when the
        # lease runs out without renewal, and when this pilot is gone (pilot/shepherd.py)
        user = self.sandbox.popen_options()
        cmd = shepherd.command(self.sandbox.command(argv, self.dir, self.own), self.lease_until,
                               self.stop_grace, user.get("user", -1), user.get("group", -1))
        with self._lock:  # a stop that came while it was starting is not lost
            self.proc = subprocess.Popen(cmd, cwd=self.dir, env=env, stdout=self._out,
                                         stderr=self._err, stdin=subprocess.PIPE,
                                         start_new_session=True)
            stopped = self.stop_reason is not None
        if stopped:
            self._signal(signal.SIGTERM)

    def renew(self, until: float) -> None:
        """The controller renewed the lease: the payload may run until `until` (Unix time)."""
        with self._lock:
            self.lapsed = self.lapsed or time.time() >= self.lease_until
            self.lease_until = max(self.lease_until, until)
        self._tell(f"{until:.3f}")

    def revoke(self) -> None:
        """The attempt is no longer this pilot's: its shepherd kills the payload at once."""
        with self._lock:
            if self.stop_reason is None:
                self.stop_reason = "lost"
        self._tell("kill")

    def _tell(self, line: str) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            if self.proc is not None and self.proc.stdin is not None:
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()

    def stop(self, why: str) -> None:
        with self._lock:
            if self.stop_reason is None:
                self.stop_reason = why
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self) -> Outcome:
        """Wait for the payload to end (or its time limit); say how it ended."""
        assert self.proc is not None
        deadline = time.monotonic() + self.max_runtime
        stop_sent: float | None = None
        while True:
            try:
                rc = self.proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline and self.stop_reason is None:
                self.stop("timeout")
            if time.time() >= self.lease_until and self.stop_reason is None:
                self.stop("lease")  # its shepherd kills it now
            if self.stop_reason is not None:
                stop_sent = stop_sent or time.monotonic()
                if time.monotonic() - stop_sent > self.stop_grace + 5:
                    self._signal(signal.SIGKILL)  # the shepherd itself does not end
        if rc == -signal.SIGTERM and self.stop_reason is None:
            time.sleep(1.0)  # a batch system signals a whole job at once: so is the pilot
        if rc != 0 and self.stop_reason is None and (time.time() >= self.lease_until
                                                     or self.lapsed):
            # its shepherd ended it at the lease, before our check; or before a renewal that
            # came too late (bench.chaos: a pilot frozen past the lease, then renewed, reported
            # the payload the shepherd had killed as failed, "terminated by signal 9")
            self.stop_reason = "lease"
        why = self.stop_reason
        if rc == 0 and why in ("interrupted", "lease", "lost"):
            why = None  # it ended on its own, successfully, before the stop reached it
        if why == "interrupted":
            return Outcome("interrupted", rc, f"pilot stopping ({self.interrupted_by})")
        if why in ("lease", "lost"):
            return Outcome("interrupted", rc, "its lease ran out: the controller did not renew "
                           "it in time" if why == "lease" else "the attempt is no longer "
                           "this pilot's")
        if why == "killed":
            return Outcome("failed", rc, "killed")
        if why == "timeout":
            return Outcome("failed", rc, f"exceeded its max run time of {self.max_runtime}s")
        if rc == 0:
            return Outcome("done", 0, None)
        if rc < 0:
            return Outcome("failed", rc, f"terminated by signal {-rc}")
        return Outcome("failed", rc, f"exited with code {rc}")

    def output(self, limit: int) -> tuple[str, str, bool]:
        """The tails of stdout and stderr, read from the files the pilot opened (whatever the
        payload did to their names)."""
        if self._out is None or self._err is None:
            return "", "", False
        half = limit // 2
        out, t1 = _tail(self._out, half)
        err, t2 = _tail(self._err, half)
        return out, err, t1 or t2

    def fresh(self, limit: int) -> list[str]:
        """What the payload wrote to stdout and stderr since the last call: at most `limit`
        bytes of each (the newest; what is skipped is marked)."""
        texts = []
        with self._lock:
            fds = (self._out, self._err)
            for i, fd in enumerate(fds):
                if fd is None:
                    return []
                size = os.fstat(fd).st_size
                if size < self._sent[i]:  # the payload truncated it: from its start again
                    self._sent[i] = 0
                start = max(self._sent[i], size - limit)
                raw = os.pread(fd, size - start, start)
                mark = ""
                if start > self._sent[i]:
                    mark = f"[... {start - self._sent[i]} bytes dropped ...]\n"
                    self._utf8[i].reset()
                self._sent[i] = start + len(raw)
                # a character cut by the end of what was written waits for the next time
                text = mark + self._utf8[i].decode(raw)
                texts.append(text.replace("\0", "\ufffd"))
        return texts

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        with self._lock:
            for fd in (self._out, self._err, self._dirfd):
                if fd is not None:
                    os.close(fd)
            self._out = self._err = self._dirfd = None
        if self._made:
            shutil.rmtree(self.dir, ignore_errors=True)
