"""Payload isolation: how the pilot starts a payload so that it sees only its own job directory
(writable), the system's read-only files and what its job was given, never the pilot's
configuration, credential, logs or other jobs' directories, nor the controller's files.

- `bwrap` (the default): bubblewrap. `/` read-only, a fresh `/tmp`, `/dev` and `/proc` (its own
  process namespace: no other process is visible), the job directory bound writable, and every
  hidden path covered (a directory by an empty tmpfs, a file by /dev/null): the pilot's config
  directory, its work directory (other jobs) and whatever its config lists in `hide`.
- `user`: the payload runs as a dedicated unprivileged user (`payload_user`) owning only its
  job directory; the pilot must run as root and keep its own files private (0600/0700).
- `none`: no sandbox at all; allowed only when the config says so, and logged loudly."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("pilot.sandbox")
ISOLATIONS = ("bwrap", "user", "none")


class SandboxError(Exception):
    """The configured isolation cannot work on this machine."""


def _covered(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


@dataclass(frozen=True)
class Sandbox:
    isolation: str = "bwrap"
    hide: tuple[str, ...] = ()
    payload_user: str = "nobody"
    bwrap: str = "bwrap"

    def check(self) -> None:
        """Refuse to start when the isolation cannot work here (before registering, so the
        machine's bootstrap token is not spent by a pilot that would run nothing)."""
        if self.isolation not in ISOLATIONS:
            raise SandboxError(f"isolation must be one of {ISOLATIONS}, not {self.isolation!r}")
        if self.isolation == "none":
            log.warning("!!! isolation = none: payloads run WITHOUT a sandbox, as this pilot's "
                        "user, and can read everything it can. Use it only on a machine that "
                        "runs nothing else and holds no secret. !!!")
            return
        if self.isolation == "user":
            if os.geteuid() != 0:
                raise SandboxError("isolation = user needs the pilot to run as root")
            try:
                pwd.getpwnam(self.payload_user)
            except KeyError:
                raise SandboxError(f"isolation = user: no user {self.payload_user!r}") from None
            return
        exe = shutil.which(self.bwrap)
        if exe is None:
            raise SandboxError("isolation = bwrap but bubblewrap is not installed (Debian and "
                               "Ubuntu: apt-get install bubblewrap); or set isolation = none "
                               "explicitly to run payloads without a sandbox")
        probe = subprocess.run([exe, "--ro-bind", "/", "/", "--unshare-all", "--share-net",
                                "--die-with-parent", "--", "/bin/true"],
                               capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            raise SandboxError(f"bubblewrap cannot make a sandbox here: {probe.stderr.strip()}"
                               " (unprivileged user namespaces may be disabled)")

    def hidden(self, own: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
        """The directories (covered by a tmpfs) and files (covered by /dev/null) to hide, from
        `own` (the pilot's config dir and work dir) and `hide`; paths that do not exist or lie
        in an already hidden directory are left out."""
        paths = sorted({os.path.abspath(os.path.expanduser(p)) for p in (*own, *self.hide)},
                       key=len)
        dirs: list[str] = []
        files: list[str] = []
        for p in paths:
            if p == "/" or not os.path.lexists(p) or _covered(p, dirs):
                continue
            (dirs if os.path.isdir(p) and not os.path.islink(p) else files).append(p)
        return dirs, files

    def command(self, argv: list[str], jobdir: Path, own: tuple[str, ...] = ()) -> list[str]:
        """The command line that runs `argv` in this sandbox, in `jobdir`."""
        if self.isolation != "bwrap":
            return argv
        job = str(jobdir.resolve())
        dirs, files = self.hidden(own)
        cmd = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--tmpfs", "/tmp", "--tmpfs", "/var/tmp", "--tmpfs", "/dev/shm"]
        for d in dirs:
            cmd += ["--tmpfs", d]
        for f in files:
            cmd += ["--ro-bind", "/dev/null", f]
        cmd += ["--bind", job, job, "--chdir", job, "--unshare-all", "--share-net",
                "--die-with-parent", "--", *argv]
        return cmd

    def popen_options(self) -> dict[str, Any]:
        """What subprocess.Popen needs besides the command (user isolation: who runs it)."""
        if self.isolation != "user":
            return {}
        pw = pwd.getpwnam(self.payload_user)
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [], "umask": 0o077}

    def give(self, fd: int) -> None:
        """Hand a file or directory the pilot made for a job to the payload's user."""
        if self.isolation == "user":
            pw = pwd.getpwnam(self.payload_user)
            os.fchown(fd, pw.pw_uid, pw.pw_gid)
