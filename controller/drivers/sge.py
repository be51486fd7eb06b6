"""(Son of) Grid Engine behind the batch-system adapter interface (controller/drivers/batch.py):
pilot jobs submitted with `qsub`, watched with `qstat -xml` (pending and running jobs, all at
once) and the accounting file (ended jobs: how each ended, accounting(5)), deleted with `qdel`.

Every command runs on the login node through a RemoteShell (SSH); Grid Engine's own error
message (`Unable to run job: Job was rejected because job requests unknown queue ...`) is what
an operator sees. The login node's shell must know SGE_ROOT (and SGE_CELL when not `default`),
as every Grid Engine user's does.
"""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from controller.config.settings import BatchEndpointConfig, SgeConfig, SgeEndpointConfig
from controller.domain.batch import BatchJob, BatchState
from controller.drivers.batch import JOB_PREFIX, BatchCommandError, PilotSubmission, submit_each
from controller.drivers.remote import Shell

MARK = "==cloudpilot-accounting=="  # between qstat's XML and the accounting lines
ALREADY_GONE = ("does not exist", "has already been deleted")
# accounting's `failed` codes of a job the site ended (sge_status(5)): a limit the qmaster
# enforced (h_rt, h_cpu, h_vmem), killed (qdel, a signal), rescheduled or migrated
BY_SITE = {37: "killed at a limit (h_rt, h_cpu or h_vmem)", 100: "killed (qdel or a signal)",
           24: "migrated", 25: "rescheduled", 26: "rescheduled", 28: "rescheduled"}
ACCOUNTING_LINES = 2000  # of the accounting file's end: jobs that ended lately


def job_script(python: str) -> str:
    """The batch script every pilot job runs: `pilot.sh DIR WALL_SECONDS`. The script starts
    when the job does, so its deadline is now plus the h_rt asked for. `exec`: the pilot is
    the job's process, which Grid Engine signals (qdel, h_rt)."""
    return f"""#!/bin/sh
# cloudpilot: one pilot per Grid Engine job (its config and token: DIR/pilot.json, mode 0600)
cd "$1" || exit 1
CLOUDPILOT_DEADLINE=$(( $(date +%s) + $2 ))
export CLOUDPILOT_DEADLINE
exec {shlex.quote(python)} ../pilot.pyz --config pilot.json
"""


class GridEngine:
    """The adapter for (Son of) Grid Engine."""

    name = "sge"

    def __init__(self, ep: BatchEndpointConfig) -> None:
        assert isinstance(ep, SgeEndpointConfig)
        self.ep = ep
        self.cfg: SgeConfig = ep.sge

    def script(self) -> str:
        return job_script(self.cfg.python)

    def qsub_options(self) -> list[str]:
        c, ep = self.cfg, self.ep
        opts = ["-terse", "-S", "/bin/sh", "-j", "y", "-r", "n", "-l", f"h_rt={c.wall_time}",
                "-v", "PATH"]  # a clean environment, as DIRAC's pilots get
        if ep.cores > 1:
            opts += ["-pe", c.parallel_environment, str(ep.cores)]
        if c.memory_resource:
            opts += ["-l", f"{c.memory_resource}={-(-ep.memory_mb // ep.cores)}M"]
        for flag, value in (("-q", c.queue), ("-P", c.project)):
            if value:
                opts += [flag, value]
        for o in c.qsub_options:
            opts += o.split(" ", 1)
        return opts

    def submit(self, shell: Shell, base: str,
               pilots: Sequence[PilotSubmission]) -> dict[str, str | BatchCommandError]:
        """Write each pilot's config to BASE/MACHINE/pilot.json and qsub it, all in one
        SSH session (batch.submit_each)."""
        opts = " ".join(shlex.quote(o) for o in self.qsub_options())
        return submit_each(shell, base, pilots,
                           f'qsub {opts} -N "{JOB_PREFIX}$m" -o "$d/sge.log" "$base/pilot.sh" '
                           f'"$d" {self.cfg.wall_time}', _job_id)

    def status(self, shell: Shell, endpoint: str) -> list[BatchJob]:
        """Every pilot job of this endpoint (this user's jobs named cp-ENDPOINT-...): pending
        and running ones from `qstat -xml`, ended ones from the accounting file's end."""
        f = self.cfg.accounting_file
        _, out, _ = shell.run(
            f'me=$(id -un); qstat -xml -u "$me" || exit 1; echo {MARK}; '
            f'tail -n {ACCOUNTING_LINES} "{f}" 2>/dev/null '
            f'| grep -F ":$me:{JOB_PREFIX}{endpoint}-" || true')
        xml, _, accounting = out.partition(MARK)
        return parse_accounting(accounting, endpoint) + parse_qstat(xml, endpoint)

    def cancel(self, shell: Shell, ids: Sequence[str]) -> None:
        if not ids:
            return
        rc, out, err = shell.run("qdel " + " ".join(shlex.quote(i) for i in ids),
                                 check=False)
        lines = [ln for ln in (err + out).splitlines() if ln.strip()
                 and not any(g in ln for g in ALREADY_GONE)
                 and "registered the job" not in ln and "has deleted job" not in ln]
        if rc != 0 and lines:
            raise BatchCommandError(" / ".join(lines[-3:]))


def _job_id(text: str) -> str | None:
    """qsub -terse prints the job id (warnings may come first; some versions print
    'Your job ID ("NAME") has been submitted' even so)."""
    words = text.split()
    for i, word in enumerate(words):
        if word == "job" and i + 1 < len(words) and words[i + 1].isdigit() \
                and i > 0 and words[i - 1] == "Your":
            return words[i + 1]
    for word in reversed(words):
        if word.isdigit():
            return word
    return None


def parse_qstat(xml: str, endpoint: str) -> list[BatchJob]:
    """`qstat -xml`'s jobs (running ones under queue_info, pending under job_info) of this
    endpoint's pilot jobs."""
    text = xml.strip()
    if not text:
        return []
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise BatchCommandError(f"qstat -xml: unreadable answer ({e})") from None
    jobs = []
    for j in root.iter("job_list"):
        name = j.findtext("JB_name") or ""
        if not name.startswith(f"{JOB_PREFIX}{endpoint}-"):
            continue
        job_id = j.findtext("JB_job_number") or ""
        code = j.findtext("state") or ""
        queue = j.findtext("queue_name") or ""
        pending = j.get("state") == "pending" or ("q" in code and "r" not in code)
        node = queue.rsplit("@", 1)[1] if "@" in queue else None
        detail = code if pending or not queue else f"{code} in {queue}"
        jobs.append(BatchJob(job_id, name.removeprefix(JOB_PREFIX),
                             BatchState.PENDING if pending else BatchState.RUNNING, detail,
                             node=None if pending else node))
    return jobs


def parse_accounting(text: str, endpoint: str) -> list[BatchJob]:
    """Accounting lines (qname:hostname:group:owner:job_name:job_number:...:failed:
    exit_status:...) of this endpoint's pilot jobs, as ended jobs (the owner is filtered on
    the login node)."""
    jobs = []
    for line in text.splitlines():
        f = line.strip().split(":")
        if len(f) < 13 or not f[4].startswith(f"{JOB_PREFIX}{endpoint}-"):
            continue
        try:
            failed, exit_status = int(f[11]), int(f[12])
        except ValueError:
            continue
        if failed in BY_SITE:
            detail = f"failed {failed}: {BY_SITE[failed]}, exit status {exit_status}"
        elif failed:
            detail = f"failed {failed} (could not start), exit status {exit_status}"
        else:
            detail = f"exit status {exit_status}"
        by_site = failed in BY_SITE
        jobs.append(BatchJob(f[5], f[4].removeprefix(JOB_PREFIX), BatchState.ENDED,
                             f"{detail} on {f[1]}", by_site=by_site,
                             failed=not by_site and (failed != 0 or exit_status != 0),
                             node=f[1] or None))
    return jobs
