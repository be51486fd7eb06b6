"""Commands on a remote host over OpenSSH, with the options every SSH use of the controller
shares (the `ssh` endpoint's Ansible runs and the batch endpoints' login nodes): the host key
checked against pinned known_hosts files (or accepted on first use when asked), key only, no
prompts, bounded connection time, no `ssh [mux]` left behind.

Secrets never go on a command line (local or remote): a command reads them from its stdin."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
        return ["ssh", "-q", "-T", "-p", str(self.port), "-i", str(self.key.expanduser()),
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


def _last(text: str, lines: int = 3) -> str:
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " / ".join(kept[-lines:])[:500]
