"""Batch-system sites over SSH: the adapter interface a batch system implements (Slurm in
controller/drivers/slurm.py, Grid Engine in controller/drivers/sge.py; the driver that runs it
on the site's login node is controller/drivers/batchsite.py).

A site defines one user on its login node; the controller reaches it over SSH (host key
pinned, key only), places the pilot zip application and the batch script once under
REMOTE_DIR/ENDPOINT (re-sent only when they change), and submits each pilot as one batch job
named cp-MACHINE whose config (with the pilot token) it writes, mode 0600, to
REMOTE_DIR/ENDPOINT/MACHINE/pilot.json through the SSH session's stdin. The directory must be
shared with the compute nodes (a home directory usually is).

To add another batch system (HTCondor, PBS/Torque), write a class with the four methods of
`BatchSystem` below, in a module beside slurm.py and sge.py (`submit_each` below does the
submission's common part), give it a settings section (a BatchSiteConfig subclass) and an
endpoint model (a BatchEndpointConfig subclass with that section, in settings.ENDPOINT_KINDS
and the AnyEndpoint union), and name it in settings.BATCH_DRIVERS, batchsite.SYSTEMS and
reconcile/registry.py:
- `script()`: the batch script, run as `pilot.sh DIR WALL_SECONDS` in the pilot's directory;
  it sets CLOUDPILOT_DEADLINE (Unix time the job will be killed) and execs
  `python ../pilot.pyz --config pilot.json`;
- `submit(shell, base, pilots)`: for each pilot, write its config (read from stdin, one line
  each) and submit the script, all in one session; return machine -> job id, or the error
  with the system's own message;
- `status(shell, endpoint)`: every job of this endpoint (named cp-ENDPOINT-...) the system
  still knows, as BatchJob (pending / running / ended; ended by the site or failed);
- `cancel(shell, ids)`: cancel these jobs; jobs already gone are not an error.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.domain.batch import BatchJob
from controller.drivers.remote import Shell
from controller.errors import DriverError

JOB_PREFIX = "cp-"  # pilot jobs are named cp-MACHINE (machine names are ENDPOINT-NNNN)
SEP = "|"


class BatchCommandError(DriverError):
    """A batch system command failed; the message is the system's own."""


@dataclass(frozen=True)
class PilotSubmission:
    machine: str
    config: str  # the pilot's JSON config; it holds the pilot token: sent on stdin only


class BatchSystem(Protocol):
    """A batch system's commands, run on the login node through `shell`."""

    name: str

    def script(self) -> str: ...

    def submit(self, shell: Shell, base: str,
               pilots: Sequence[PilotSubmission]) -> dict[str, str | BatchCommandError]: ...

    def status(self, shell: Shell, endpoint: str) -> list[BatchJob]: ...

    def cancel(self, shell: Shell, ids: Sequence[str]) -> None: ...


def remote_base(remote_dir: str, endpoint: str) -> str:
    """REMOTE_DIR/ENDPOINT as a shell word (a leading ~/ is the user's home)."""
    path = f"{remote_dir.rstrip('/')}/{endpoint}"
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def submit_each(shell: Shell, base: str, pilots: Sequence[PilotSubmission], command: str,
                job_id: Callable[[str], str | None]) -> dict[str, str | BatchCommandError]:
    """Write each pilot's config (read from stdin, one line each: they hold tokens) to
    BASE/MACHINE/pilot.json with mode 0600 and run `command` for it (a shell command line
    that submits the script: $m is the machine, $d its directory, $base BASE), all in one
    SSH session. machine -> job id (`job_id` reads it from the command's output), or the
    error with the system's own message."""
    if not pilots:
        return {}
    names = " ".join(shlex.quote(p.machine) for p in pilots)
    script = f"""umask 077
base={base}
for m in {names}; do
  IFS= read -r cfg || cfg=
  d="$base/$m"
  if ! mkdir -p "$d" || ! printf '%s\\n' "$cfg" > "$d/pilot.json"; then
    echo "$m{SEP}1{SEP}cannot write $d/pilot.json"; continue
  fi
  out=$({command} 2>&1 </dev/null)
  printf '%s{SEP}%s{SEP}%s\\n' "$m" "$?" "$(printf '%s' "$out" | tr '\\n' ' ')"
done
"""
    stdin = "".join(p.config.replace("\n", " ") + "\n" for p in pilots).encode()
    _, out, _ = shell.run(script, stdin)
    what = command.split()[0]
    got: dict[str, str | BatchCommandError] = {}
    for line in out.splitlines():
        parts = line.split(SEP, 2)
        if len(parts) != 3:
            continue
        machine, rc, text = parts
        found = job_id(text)
        if rc == "0" and found:
            got[machine] = found
        else:
            got[machine] = BatchCommandError(text.strip() or f"{what} exit code {rc}")
    for p in pilots:
        got.setdefault(p.machine, BatchCommandError(f"{what} gave no answer"))
    return got
