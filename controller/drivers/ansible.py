"""Run one playbook through ansible-runner, the way AWX does: a fresh private data directory
per run (removed afterwards: it may hold rendered pilot configs), an `ident`, a job timeout and
an idle timeout, an event handler that records per-host, per-task results, a cancel callback,
and an explicit mapping of the outcome (successful | failed | timeout | error | canceled, rc 127,
unreachable hosts) to data the driver records. Nothing secret goes on a command line, in
extravars or in the events: secrets travel in files the playbook copies."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
_DETAIL = ("stderr", "module_stderr", "reason", "stdout", "module_stdout")


@dataclass(frozen=True)
class TaskResult:
    """One task's result on one host, as recorded in that machine's events."""

    host: str
    task: str
    status: str  # ok | changed | failed | unreachable | skipped
    message: str = ""

    def describe(self, playbook: str) -> str:
        text = f"{playbook}: [{self.status}] {self.task}"
        return f"{text}: {self.message}" if self.message else text


@dataclass
class HostOutcome:
    ok: int = 0
    changed: int = 0
    failed: bool = False
    unreachable: bool = False
    error: str = ""  # which task failed and why
    results: dict[str, Any] = field(default_factory=dict)  # task name -> registered res


@dataclass
class RunOutcome:
    """What one playbook run did, host by host."""

    playbook: str
    status: str  # successful | failed | timeout | error | canceled | setup-error
    rc: int | None
    hosts: dict[str, HostOutcome]
    tasks: list[TaskResult]
    error: str = ""  # a run-level problem (no ansible-playbook, timeout, cancel)

    def host(self, name: str) -> HostOutcome:
        """A host the run never reached (it ended first) counts as failed, with the reason."""
        got = self.hosts.get(name)
        if got is None:
            return HostOutcome(failed=True, error=self.error or f"{self.playbook} did not run "
                               f"on this host (run {self.status})")
        if self.status != "successful" and not (got.failed or got.unreachable) and self.error:
            got.failed, got.error = True, self.error
        return got


def _message(res: Mapping[str, Any]) -> str:
    """The gist of a failure: Ansible's msg, and the last line the command printed on stderr
    (e.g. the exception of a failing script) when msg alone says little."""
    msg = " ".join(str(res.get("msg") or "").split())
    detail = ""
    for key in _DETAIL:
        lines = [ln.strip() for ln in str(res.get(key) or "").splitlines() if ln.strip()]
        if lines:
            detail = lines[-1]
            break
    text = f"{msg}: {detail}" if msg and detail and detail not in msg else (msg or detail)
    return text[:500]


class _Recorder:
    """The event handler: per-host, per-task results and the final stats."""

    def __init__(self, playbook: str, on_task: Callable[[TaskResult], None] | None) -> None:
        self.playbook = playbook
        self.on_task = on_task
        self.hosts: dict[str, HostOutcome] = {}
        self.tasks: list[TaskResult] = []

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host")
        if kind == "playbook_on_stats":
            for name in set(data.get("processed") or {}):
                h = self.hosts.setdefault(name, HostOutcome())
                h.ok = int((data.get("ok") or {}).get(name, 0))
                h.changed = int((data.get("changed") or {}).get(name, 0))
                h.failed = h.failed or bool((data.get("failures") or {}).get(name))
                h.unreachable = h.unreachable or bool((data.get("dark") or {}).get(name))
        elif host and kind.startswith("runner_on_") and kind != "runner_on_start":
            res = data.get("res") or {}
            task = str(data.get("task") or "?")
            h = self.hosts.setdefault(host, HostOutcome())
            status = {"runner_on_ok": "changed" if res.get("changed") else "ok",
                      "runner_on_failed": "failed", "runner_on_unreachable": "unreachable",
                      "runner_on_skipped": "skipped"}.get(kind)
            if status is None:
                return False
            if status == "failed" and data.get("ignore_errors"):
                status = "ok"
            message = _message(res) if status in ("failed", "unreachable") else ""
            if status == "failed":
                h.failed = True
                h.error = h.error or f"task '{task}' failed: {message}"
            elif status == "unreachable":
                h.unreachable = True
                h.error = h.error or f"unreachable at task '{task}': {message}"
            elif not res.get("_ansible_no_log"):
                h.results[task] = res
            result = TaskResult(host, task, status, message)
            self.tasks.append(result)
            if self.on_task is not None:
                self.on_task(result)
        return False  # do not keep the event's file: the directory goes anyway


def ansible_bin_dir() -> str:
    """The directory holding ansible-playbook: the running interpreter's (a venv's) bin."""
    return str(Path(sys.executable).parent)


def run_playbook(playbook: str, inventory: dict[str, Any], *, ident: str,
                 extravars: Mapping[str, Any] | None = None,
                 files: Mapping[str, str] | None = None,
                 ssh_args: str = "", job_timeout: float = 120, idle_timeout: float = 60,
                 forks: int = 10, cancel: threading.Event | None = None,
                 on_task: Callable[[TaskResult], None] | None = None,
                 work_root: Path | None = None) -> RunOutcome:
    """Run playbooks/<playbook> against `inventory` and say what happened on each host.

    `files` are written (mode 0600) into the private data directory under `files/`, whose path
    the playbook gets as `cp_files`; that is how secrets reach a host without ever being an
    argument or an event."""
    import ansible_runner

    recorder = _Recorder(playbook, on_task)
    if work_root is not None:
        work_root.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=f"{ident}-", dir=work_root))
    try:
        os.chmod(private, 0o700)
        (private / "files").mkdir(mode=0o700)
        for name, content in (files or {}).items():
            fd = os.open(private / "files" / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(content)
        runner = ansible_runner.run(
            private_data_dir=str(private), playbook=str(PLAYBOOKS / playbook),
            inventory=inventory, ident=ident, forks=forks, quiet=True,
            extravars={**(extravars or {}), "cp_files": str(private / "files")},
            envvars=_environment(private, ssh_args),
            settings={"job_timeout": int(job_timeout), "idle_timeout": int(idle_timeout),
                      "suppress_ansible_output": True,
                      "pexpect_timeout": 1},  # how often a cancel and the timeouts are checked
            event_handler=recorder,
            cancel_callback=(lambda: cancel.is_set()) if cancel is not None else None,
        )
        status, rc = str(runner.status), runner.rc
        if rc == 127:
            status = "setup-error"
        error = _error(playbook, status, rc, runner, recorder,
                       f"job timeout {job_timeout:.0f}s, idle {idle_timeout:.0f}s")
        return RunOutcome(playbook, status, rc, recorder.hosts, recorder.tasks, error)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _environment(private: Path, ssh_args: str) -> dict[str, str]:
    """ansible-playbook's environment: this interpreter's bin first on PATH, host keys
    checked, its temporary files in the run's private directory."""
    path = os.pathsep.join([ansible_bin_dir(), os.environ.get("PATH", "/usr/bin:/bin")])
    return {
        "PATH": path,
        "ANSIBLE_SSH_ARGS": ssh_args,  # no ControlPersist: leave no `ssh [mux]` behind
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_LOCAL_TEMP": str(private / "tmp"),
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
    }


def _error(playbook: str, status: str, rc: int | None, runner: Any, recorder: _Recorder,
           timeouts: str) -> str:
    """What went wrong with the run as a whole ("": nothing, or only on some hosts)."""
    if status == "setup-error":
        return (f"ansible-playbook not found (rc 127): install the `ssh` extra "
                f"(pip install 'cloudpilot[ssh]') so that it is in {ansible_bin_dir()}")
    if status == "timeout":
        return f"{playbook} timed out ({timeouts})"
    if status == "canceled":
        return f"{playbook} was canceled"
    if status == "error":
        return f"{playbook} could not run (rc {rc})"
    if status == "failed" and not recorder.hosts:
        return f"{playbook} failed before reaching any host (rc {rc}): " + _tail(runner)
    return ""


def _tail(runner: Any) -> str:
    try:
        text = runner.stdout.read()
    except (AttributeError, OSError, ValueError):
        return ""
    return " ".join(text.split())[-500:]


def end_orphaned_runs(runs_dir: Path) -> list[int]:
    """End ansible-playbook processes left running from `runs_dir` by a controller that died
    during a run (they ignore the hang-up, and would hold SSH sessions open). Returns their
    PIDs."""
    import signal

    marker = str(runs_dir).encode()
    ended = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and b"ansible" in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
                ended.append(int(proc.name))
            except ProcessLookupError:
                pass
    return ended
