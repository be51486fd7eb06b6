"""The shepherd: one small process per job between the pilot and the payload, so that no
process of the job outlives the job or its lease (standard library only, Linux and elsewhere).

    python -I -c SOURCE UNTIL GRACE UID GID UMASK ARGV...    (see `command()`)

It runs ARGV in a session of its own, as user UID (-1: as itself), and then:
- reads lease renewals on its stdin, one deadline (Unix time) a line, written by the pilot for
  each heartbeat the controller answered. When the deadline passes (the controller unreachable,
  or the pilot frozen by SIGSTOP: the shepherd is a process of its own and keeps watch), when
  stdin ends (the pilot is gone) or when a line says `kill` (the attempt is no longer the
  pilot's), it kills the job's processes at once;
- on SIGTERM passes SIGTERM to the payload's process group, and kills everything GRACE
  seconds later if the payload has not ended;
- once the payload has ended, kills whatever it left behind, then exits with its status (its
  exit code, or the signal that ended it).

It is a child subreaper (Linux): every orphan of the job becomes its child, also one that
started its own session, so "the job's processes" are its children, found in /proc until
none is left; elsewhere, the payload's process group. It runs from its source with `python -I`
so that the job's environment (passed on to the payload) cannot steer its own Python."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pkgutil
import select
import signal
import subprocess
import sys
import time


def _children() -> list[int]:
    me, found = str(os.getpid()), []
    for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
        with contextlib.suppress(OSError, IndexError):
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[1] == me and fields[0] != "Z":
                found.append(int(d))
    return found


def _kill(pid: int, sig: int, group: bool = False) -> None:
    with contextlib.suppress(OSError):
        (os.killpg if group else os.kill)(pid, sig)


def main(until: float, grace: float, uid: int, gid: int, umask: int, argv: list[str]) -> int:
    with contextlib.suppress(Exception):  # PR_SET_CHILD_SUBREAPER
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
    as_user = uid >= 0  # isolation = user: the payload runs as another, unprivileged user
    proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                            user=uid if as_user else None, group=gid if as_user else None,
                            extra_groups=[] if as_user else None, umask=umask if as_user else -1)
    term: list[float] = []

    def on_term(*_: object) -> None:
        if not term:
            term.append(time.monotonic())
            _kill(proc.pid, signal.SIGTERM, True)

    signal.signal(signal.SIGTERM, on_term)
    status: int | None = None
    pilot = True  # its end of our stdin is open
    while status is None:
        if pilot and select.select([sys.stdin], [], [], 0.05)[0]:
            line = sys.stdin.buffer.readline().strip()
            pilot = bool(line)
            if line == b"kill":
                until = 0.0
            elif until:
                with contextlib.suppress(ValueError):
                    until = max(until, float(line or 0))
        elif not pilot:
            time.sleep(0.05)
        status = proc.poll()
        late = term and time.monotonic() - term[0] >= grace
        if status is None and (not pilot or time.time() >= until or late):
            break
    while True:  # the payload's group, then every child left (orphans come to us), until none
        _kill(proc.pid, signal.SIGKILL, True)
        ended = status is not None or proc.poll() is not None  # before the look: its orphans
        left = [pid for pid in _children() if pid != proc.pid]  # are ours by then
        for pid in left:
            _kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if ended and not left:
            break
        time.sleep(0.02)
    return proc.wait() if status is None else status


def command(argv: list[str], until: float, grace: float, uid: int = -1, gid: int = -1,
            umask: int = 0o077) -> list[str]:
    """The command line that runs `argv` under a shepherd (also when the pilot runs from a
    zip: the source goes on the command line)."""
    source = pkgutil.get_data("pilot", "shepherd.py")
    assert source is not None
    return [sys.executable, "-I", "-c", source.decode(), str(until), str(grace), str(uid),
            str(gid), str(umask), *argv]


if __name__ == "__main__":
    a = sys.argv[1:]
    rc = main(float(a[0]), float(a[1]), int(a[2]), int(a[3]), int(a[4]), a[5:])
    if rc < 0:  # ended by a signal: end the same way
        with contextlib.suppress(OSError, ValueError):
            signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    sys.exit(rc)
