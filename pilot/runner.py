"""Run one job: prepare its working directory, start the payload as a subprocess with a time
limit, stop it on request, collect the tail of its output."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilot import shepherd


@dataclass
class Outcome:
    status: str  # done | failed | interrupted
    exit_code: int | None
    reason: str | None


def _tail(path: Path, limit: int) -> tuple[str, bool]:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "", False
    with open(path, "rb") as f:
        if size > limit:
            f.seek(size - limit)
        text = f.read().decode(errors="replace")
    raw = text.encode()
    if len(raw) > limit:  # replacement characters can make text longer than its bytes
        text = raw[-limit:].decode(errors="ignore")
    return text, size > limit


class JobRun:
    """One running job. `stop(why)` asks it to end: 'killed', 'interrupted' or 'timeout'."""

    def __init__(self, job: dict[str, Any], token: str, workdir: Path, controller_url: str,
                 stop_grace: float = 5.0) -> None:
        self.job = job
        self.id: int = job["id"]
        self.cores: int = job["requirements"]["cores"]
        self.memory_mb: int = job["requirements"]["memory_mb"]
        self.max_runtime: int = job["requirements"]["max_runtime"]
        self.token = token
        self.dir = workdir / f"job-{self.id}"
        self.controller_url = controller_url
        self.stop_grace = stop_grace
        self.proc: subprocess.Popen[bytes] | None = None  # the payload's shepherd
        self.attempt: int | None = job.get("attempt")
        self.lease_until = float("inf")  # Unix time the payload must be dead by, unless renewed
        self.stop_reason: str | None = None
        self.interrupted_by = "SIGTERM"  # what interrupted the pilot, for the job's record
        self._lock = threading.Lock()

    @property
    def progress_file(self) -> Path:
        return self.dir / ".progress"

    def progress(self) -> str | None:
        try:
            return self.progress_file.read_text()[-1000:].strip() or None
        except OSError:
            return None

    def prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for f in self.job.get("inputs", []):
            target = self.dir / Path(f["name"]).name
            if "content" in f:
                target.write_text(f["content"])
            elif "content_b64" in f:
                target.write_bytes(base64.b64decode(f["content_b64"]))
            elif "url" in f:
                with urllib.request.urlopen(f["url"], timeout=60) as r, open(target, "wb") as o:
                    shutil.copyfileobj(r, o)

    def start(self) -> None:
        env = dict(os.environ)
        for k in [k for k in env if k.startswith("CLOUDPILOT_")]:
            del env[k]  # never hand the pilot token to a payload
        env.update(self.job.get("env", {}))
        env.update({
            "CLOUDPILOT_JOB_ID": str(self.id),
            "CLOUDPILOT_JOB_TOKEN": self.token,
            "CLOUDPILOT_URL": self.controller_url,
            "CLOUDPILOT_PROGRESS_FILE": str(self.progress_file),
        })
        argv = [self.job["executable"], *self.job.get("arguments", [])]
        # under a shepherd: it ends the payload's processes when the payload ends, when the
        # lease runs out without renewal, and when this pilot is gone (pilot/shepherd.py)
        cmd = shepherd.command(argv, self.lease_until, self.stop_grace)
        with open(self.dir / ".stdout", "wb") as out, open(self.dir / ".stderr", "wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, env=env, stdout=out, stderr=err,
                                         stdin=subprocess.PIPE, start_new_session=True)

    def renew(self, until: float) -> None:
        """The controller renewed the lease: the payload may run until `until` (Unix time)."""
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
        half = limit // 2
        out, t1 = _tail(self.dir / ".stdout", half)
        err, t2 = _tail(self.dir / ".stderr", half)
        return out, err, t1 or t2

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        shutil.rmtree(self.dir, ignore_errors=True)
