"""Commands on a remote host over OpenSSH, with the options every SSH use of the controller
shares (the `ssh` endpoint's Ansible runs and the batch endpoints' login nodes): the host key
checked against pinned known_hosts files (or accepted on first use when asked), key only, no
prompts, bounded connection time, no `ssh [mux]` left behind.

Secrets never go on a command line (local or remote): a command reads them from its stdin."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import select
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from controller.errors import DriverError, DriverSetupError


def ssh_options(known_hosts: Sequence[Path], *, trust_on_first_use: bool = False,
                connect_timeout: int = 10) -> list[str]:
    """The `-o` options of every SSH connection the controller makes."""
    strict = "accept-new" if trust_on_first_use else "yes"
    return [f"UserKnownHostsFile={' '.join(str(p) for p in known_hosts)}",
            "GlobalKnownHostsFile=/dev/null", f"StrictHostKeyChecking={strict}",
            "HashKnownHosts=no", "BatchMode=yes", "IdentitiesOnly=yes",
            "PasswordAuthentication=no", f"ConnectTimeout={connect_timeout}",
            "ServerAliveInterval=5", "ServerAliveCountMax=3", "LogLevel=ERROR",
            "ControlMaster=no", "ControlPersist=no"]


class RemoteError(DriverError):
    """A command on a remote host failed."""


class Unreachable(RemoteError):
    """The remote host could not be reached over SSH (ssh itself failed: rc 255)."""


class Shell(Protocol):
    """Runs a shell script on a remote host: (rc, stdout, stderr)."""

    def run(self, script: str, stdin: bytes = b"", check: bool = True) -> tuple[int, str, str]:
        ...


@dataclass(frozen=True)
class RemoteShell:
    """`sh -c SCRIPT` on one host as one user, over SSH. The script is not secret (it is on
    ssh's command line); what is secret goes through `stdin`."""

    address: str
    port: int
    user: str
    key: Path
    known_hosts: tuple[Path, ...]
    trust_on_first_use: bool = False
    connect_timeout: int = 10
    timeout: float = 60.0

    def argv(self, script: str) -> list[str]:
        opts = ssh_options(self.known_hosts, trust_on_first_use=self.trust_on_first_use,
                           connect_timeout=self.connect_timeout)
        return ["ssh", "-T", "-p", str(self.port), "-i", str(self.key.expanduser()),
                *(x for o in opts for x in ("-o", o)), f"{self.user}@{self.address}",
                "sh -c " + shlex.quote(script)]

    def run(self, script: str, stdin: bytes = b"", check: bool = True) -> tuple[int, str, str]:
        """Run `script`; return (rc, stdout, stderr). rc 255 (ssh could not connect or
        authenticate) raises Unreachable; any other non-zero rc raises RemoteError with the
        command's own message when `check`."""
        try:
            p = subprocess.run(self.argv(script), input=stdin, capture_output=True,
                               timeout=self.timeout)
        except FileNotFoundError:
            raise DriverSetupError("the OpenSSH client (ssh) is not installed") from None
        except subprocess.TimeoutExpired:
            raise Unreachable(f"{self.where}: no answer within {self.timeout:.0f}s") from None
        out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        if p.returncode == 255:
            raise Unreachable(f"{self.where}: ssh failed: {_last(err) or 'rc 255'}")
        if check and p.returncode != 0:
            raise RemoteError(_last(err) or _last(out) or f"exit code {p.returncode}")
        return p.returncode, out, err

    @property
    def where(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


class RemoteSession:
    """One SSH connection and one remote `sh`, kept open: each command is written to that
    shell's stdin (its own stdin data base64-encoded in a here-document, never on a command
    line) and its output read back up to an end marker. A command then costs neither a new
    connection nor a new login shell (a site's login scripts can take a second). The command
    runs in a subshell (its `cd`, `umask`, `exit` stay its own); its stderr comes merged into
    its stdout. A broken session is started again at the next command."""

    def __init__(self, shell: RemoteShell) -> None:
        self.shell = shell
        self.proc: subprocess.Popen[bytes] | None = None
        self._err: IO[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return self.shell.where

    def _start(self) -> None:
        self.close()
        self._err = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(self.shell.argv("exec sh"), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._err,
                                         start_new_session=True)
        except FileNotFoundError:
            raise DriverSetupError("the OpenSSH client (ssh) is not installed") from None
        try:
            self._exchange("true", b"", self.shell.connect_timeout + self.shell.timeout)
        except BrokenPipeError:  # ssh ended at once (refused, unknown host key, ...)
            msg = self._stderr()
            self.close()
            raise Unreachable(f"{self.where}: ssh failed: {msg or 'no message'}") from None

    def run(self, script: str, stdin: bytes = b"", check: bool = True) -> tuple[int, str, str]:
        with self._lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            try:
                rc, out = self._exchange(script, stdin, self.shell.timeout)
            except BrokenPipeError:  # the session had died: nothing was run; once more
                self._start()
                rc, out = self._exchange(script, stdin, self.shell.timeout)
        if check and rc != 0:
            raise RemoteError(_last(out) or f"exit code {rc}")
        return rc, out, ""

    def _exchange(self, script: str, stdin: bytes, timeout: float) -> tuple[int, str]:
        assert self.proc is not None and self.proc.stdin is not None
        tag = secrets.token_hex(8)
        data = base64.encodebytes(stdin).decode()
        text = (f"cp_run() (\n{script}\n)\n"
                f"base64 -d <<'CP_IN_{tag}' | cp_run 2>&1\n{data}CP_IN_{tag}\n"
                f"printf '\\n%s %s\\n' CP_END_{tag} \"$?\"\n")
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()
        marker = f"\nCP_END_{tag} ".encode()
        buf = b""
        deadline = time.monotonic() + timeout
        out = self.proc.stdout
        assert out is not None
        while True:
            at = buf.find(marker)
            if at >= 0 and buf.endswith(b"\n"):
                rc = int(buf[at + len(marker):].split()[0])
                return rc, buf[:at].decode(errors="replace")
            left = deadline - time.monotonic()
            ready = select.select([out], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                self.close()
                raise Unreachable(f"{self.where}: no answer within {timeout:.0f}s")
            chunk = os.read(out.fileno(), 65536)
            if not chunk:  # the session ended: ssh says why
                msg = self._stderr()
                self.close()
                raise Unreachable(f"{self.where}: ssh session ended: {msg or 'no message'}")
            buf += chunk

    def _stderr(self) -> str:
        if self._err is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self._err.seek(0)
            return _last(self._err.read().decode(errors="replace"))
        return ""

    def close(self) -> None:
        """End the session (its ssh process, by PID)."""
        p, self.proc = self.proc, None
        if p is not None:
            with contextlib.suppress(OSError, ValueError):
                if p.stdin is not None:
                    p.stdin.close()
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            for f in (p.stdout,):
                if f is not None:
                    f.close()
        if self._err is not None:
            self._err.close()
            self._err = None


def _last(text: str, lines: int = 3) -> str:
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " / ".join(kept[-lines:])[:500]
