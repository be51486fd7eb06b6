"""Slurm behind the batch-system adapter interface (controller/drivers/batch.py): pilot jobs
submitted with `sbatch`, watched with `squeue -t all` (no `sacct`: it needs slurmdbd, and
ended jobs stay in squeue for MinJobAge seconds), cancelled with `scancel`.

Every command runs on the login node through a RemoteShell (SSH); Slurm's own error message
(`sbatch: error: invalid partition specified: ...`) is what an operator sees.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from controller.config.settings import BatchEndpointConfig, SlurmConfig, SlurmEndpointConfig
from controller.domain.batch import BatchJob, BatchState
from controller.drivers.batch import (
    JOB_PREFIX,
    SEP,
    BatchCommandError,
    PilotSubmission,
    submit_each,
)
from controller.drivers.remote import Shell

PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
           "RESV_DEL_HOLD", "SUSPENDED", "RESIZING"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "STOPPED"}
# ended by the site (not by the pilot): its jobs are interrupted, not failed
BY_SITE = {"CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "DEADLINE", "REVOKED"}
FAILED = {"FAILED", "BOOT_FAIL", "OUT_OF_MEMORY"}
ALREADY_GONE = ("already completing or completed", "Invalid job id specified")


def job_script(python: str) -> str:
    """The batch script every pilot job runs: `pilot.sh DIR WALL_SECONDS`. The pilot learns
    its time left from the job's end time as Slurm has it (as DIRAC's SLURMResourceUsage asks
    `scontrol`/`squeue`); failing that, from the start plus the wall time asked for. `exec`:
    the pilot is the job's process, so Slurm's SIGTERM (scancel, wall time) reaches it."""
    return f"""#!/bin/sh
# cloudpilot: one pilot per Slurm job (its config and token: DIR/pilot.json, mode 0600)
cd "$1" || exit 1
end=$(squeue -h -j "$SLURM_JOB_ID" -o %e 2>/dev/null)
case "$end" in
  [0-9]*) deadline=$(date -d "$end" +%s 2>/dev/null) || deadline= ;;
  *) deadline= ;;
esac
[ -n "$deadline" ] || deadline=$(( $(date +%s) + $2 ))
CLOUDPILOT_DEADLINE=$deadline
export CLOUDPILOT_DEADLINE
exec {shlex.quote(python)} ../pilot.pyz --config pilot.json
"""


class Slurm:
    """The adapter for Slurm."""

    name = "slurm"

    def __init__(self, ep: BatchEndpointConfig) -> None:
        assert isinstance(ep, SlurmEndpointConfig)
        self.ep = ep
        self.cfg: SlurmConfig = ep.slurm

    def script(self) -> str:
        return job_script(self.cfg.python)

    def sbatch_options(self) -> list[str]:
        c, ep = self.cfg, self.ep
        opts = ["--parsable", "--nodes=1", "--ntasks=1", f"--cpus-per-task={ep.cores}",
                f"--mem={ep.memory_mb}M", f"--time={-(-c.wall_time // 60)}",
                "--export=PATH,SLURM_CONF"]  # a clean environment, as DIRAC's pilots get
        for flag, value in (("--partition", c.partition), ("--account", c.account),
                            ("--qos", c.qos)):
            if value:
                opts.append(f"{flag}={value}")
        return opts + list(c.sbatch_options)

    def submit(self, shell: Shell, base: str,
               pilots: Sequence[PilotSubmission]) -> dict[str, str | BatchCommandError]:
        """Write each pilot's config to BASE/MACHINE/pilot.json and sbatch it, all in one
        SSH session (batch.submit_each)."""
        opts = " ".join(shlex.quote(o) for o in self.sbatch_options())
        return submit_each(shell, base, pilots,
                           f'sbatch {opts} --job-name="{JOB_PREFIX}$m" '
                           f'--output="$d/slurm-%j.log" "$base/pilot.sh" "$d" '
                           f'{self.cfg.wall_time}', _job_id)

    def status(self, shell: Shell, endpoint: str) -> list[BatchJob]:
        """Every pilot job of this endpoint (this user's jobs named cp-ENDPOINT-...), in any
        state Slurm still remembers."""
        fmt = SEP.join(["%i", "%j", "%T", "%r", "%N"])
        _, out, _ = shell.run(f'squeue -h -t all -u "$(id -un)" -o {shlex.quote(fmt)}')
        return parse_squeue(out, endpoint)

    def cancel(self, shell: Shell, ids: Sequence[str]) -> None:
        if not ids:
            return
        rc, out, err = shell.run("scancel " + " ".join(shlex.quote(i) for i in ids),
                                 check=False)
        lines = [ln for ln in (err + out).splitlines() if ln.strip()
                 and not any(g in ln for g in ALREADY_GONE)]
        if rc != 0 and lines:
            raise BatchCommandError(" / ".join(lines[-3:]))


def _job_id(text: str) -> str | None:
    """sbatch --parsable prints 'ID' or 'ID;CLUSTER' (warnings may come first)."""
    for word in reversed(text.split()):
        head = word.split(";", 1)[0]
        if head.isdigit():
            return head
    return None


def parse_squeue(out: str, endpoint: str) -> list[BatchJob]:
    """squeue's lines (%i|%j|%T|%r|%N) of this endpoint's pilot jobs."""
    jobs = []
    for line in out.splitlines():
        parts = line.strip().split(SEP)
        if len(parts) != 5 or not parts[1].startswith(f"{JOB_PREFIX}{endpoint}-"):
            continue
        job_id, name, state, reason, node = parts
        state = state.split()[0].rstrip("+")  # 'CANCELLED by 0' -> CANCELLED
        if state in PENDING:
            s = BatchState.PENDING
        elif state in RUNNING:
            s = BatchState.RUNNING
        else:
            s = BatchState.ENDED
        detail = state if reason in ("", "None") else f"{state} ({reason})"
        if node and s != BatchState.PENDING:
            detail += f" on {node}"
        jobs.append(BatchJob(job_id, name.removeprefix(JOB_PREFIX), s, detail,
                             by_site=state in BY_SITE, failed=state in FAILED,
                             node=node or None))
    return jobs
