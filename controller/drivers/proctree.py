"""All the processes of one local machine (its pilot and every payload, also those that started
their own session or were orphaned), so that the local driver can kill them all and know they
are gone before it calls the machine lost (issue 11: a payload never outlives its machine's
lease unseen).

On Linux with a writable cgroup v2 hierarchy, each machine gets its own cgroup: the pilot
enters it before it starts (a shell wrapper writes its PID into `cgroup.procs`, then execs
the pilot), every descendant inherits it, and `cgroup.kill` (or SIGKILL to each member of a
frozen group) ends them all. Elsewhere, the machine's processes are found by a marker in
their environment, inherited from the pilot (best effort: a payload that clears its
environment escapes it)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from pathlib import Path

MARKER = "CP_LOCAL_MACHINE"  # not CLOUDPILOT_*: the pilot strips those from payloads


def cgroup_root() -> Path | None:
    """Where this process may create cgroups (v2), or None."""
    try:
        own = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    rel = next((line[3:] for line in own.splitlines() if line.startswith("0::")), None)
    if rel is None:
        return None
    for mount in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        base = mount / rel.strip().lstrip("/")
        if (mount / "cgroup.procs").exists() and (base / "cgroup.procs").exists() \
                and os.access(base, os.W_OK):
            return base
    return None


class MachineProcesses:
    """The processes of one local machine, identified by `key` (unique per data dir)."""

    def __init__(self, scope: Path, machine: str) -> None:
        digest = hashlib.sha1(str(scope.resolve()).encode()).hexdigest()[:10]
        self.key = f"{machine}-{digest}"
        root = cgroup_root()
        self.cgroup = root / f"cloudpilot-{digest}" / machine if root is not None else None

    def wrap(self, argv: list[str]) -> list[str]:
        """The command that starts `argv` inside this machine's cgroup (when there is one)."""
        if self.cgroup is None:
            return argv
        try:
            self.cgroup.mkdir(parents=True, exist_ok=True)
        except OSError:
            self.cgroup = None
            return argv
        return ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"',
                str(self.cgroup), *argv]

    def env(self) -> dict[str, str]:
        return {MARKER: self.key}

    def pids(self) -> set[int]:
        if self.cgroup is not None and self.cgroup.exists():
            with contextlib.suppress(OSError):
                return {int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()}
        return self._marked()

    def _marked(self) -> set[int]:
        needle = f"{MARKER}={self.key}".encode()
        found = set()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    found.add(int(d.name))
        return found

    def kill(self, timeout: float = 5.0) -> bool:
        """SIGKILL every process of the machine and wait until none is left; True if none
        is (zombies waiting for their parent to reap them count as gone)."""
        deadline = time.monotonic() + timeout
        if self.cgroup is not None and (self.cgroup / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (self.cgroup / "cgroup.kill").write_text("1")
        while True:
            left = {p for p in self.pids() if not _zombie(p)}
            if not left:
                if self.cgroup is not None:
                    with contextlib.suppress(OSError):
                        self.cgroup.rmdir()
                        self.cgroup.parent.rmdir()  # the data dir's group, when it was the last
                return True
            if time.monotonic() > deadline:
                return False
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # gone
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
