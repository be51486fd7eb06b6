"""The pilot's loop: register, then ask for a job for each free slot (long-poll), run it,
heartbeat, upload output, report. Exits when idle longer than its idle timeout, and on SIGTERM
stops taking work, reports its running jobs as interrupted (so they are rescheduled) and exits.
Cut off from its controller longer than its orphan timeout, it leaves: at once when it holds no
job, else when the leases of the jobs it holds have run out (the controller gives them to
others then)."""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from pilot import __version__
from pilot.client import Client, ClientError
from pilot.config import PilotConfig
from pilot.files import upload
from pilot.metadata import spot_notice
from pilot.runner import JobRun
from pilot.sandbox import Sandbox

log = logging.getLogger("pilot")


class Agent:
    def __init__(self, cfg: PilotConfig) -> None:
        self.cfg = cfg
        self.stopping = threading.Event()  # SIGTERM: interrupt jobs and exit
        self.draining = threading.Event()  # take no new work; exit when jobs are done
        self.client = Client(cfg.controller_url, cfg.token,
                             stopped=lambda: self.stopping.is_set() or self.orphaned())
        self.jobs: dict[int, JobRun] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.pilot_id: str | None = None
        self.heartbeat_interval = cfg.heartbeat_interval or 10.0
        self.last_busy = time.monotonic()
        self.workdir = Path(cfg.workdir).resolve()
        self.exit_reason = ""
        self.sandbox = Sandbox(cfg.isolation, tuple(cfg.hide), cfg.payload_user)
        # hidden from payloads whatever the config says: this pilot's config and work dirs
        self.own = tuple(p for p in (str(self.workdir), cfg.config_path and
                                     str(Path(cfg.config_path).parent)) if p)
        self.url_allow: list[str] = []
        self.limits: dict[str, int] = {}  # output files and live output (from registering)

    # resources ---------------------------------------------------------------------------
    def free(self) -> tuple[int, int, int]:
        with self.lock:
            cores = self.cfg.cores - sum(j.cores for j in self.jobs.values())
            mem = self.cfg.memory_mb - sum(j.memory_mb for j in self.jobs.values())
            return max(cores, 0), max(mem, 0), self.cfg.slots - len(self.jobs)

    def orphaned(self) -> bool:
        """Cut off from the controller longer than the orphan timeout, holding no job whose
        lease still runs (a job past its lease is the controller's to give to others)."""
        if time.monotonic() - self.client.last_contact <= self.cfg.orphan_timeout:
            return False
        now = time.time()
        with self.lock:
            return not any(r.lease_until > now for r in self.jobs.values())

    # lifecycle ---------------------------------------------------------------------------
    def register(self) -> None:
        c = self.cfg
        out = self.client.call("POST", "/api/v1/pilots/register", {
            "machine": c.machine, "endpoint": c.endpoint, "cores": c.cores,
            "memory_mb": c.memory_mb, "tags": c.tags, "slots": c.slots,
            "version": __version__,
        })
        self.pilot_id = out["pilot_id"]
        # from now on this pilot's own credential (held in memory only); the bootstrap token
        # it started with is spent
        self.client.token = out["token"]
        self.url_allow = list(out.get("input_url_allow", []))
        self.limits = {k: int(out[k]) for k in ("max_output_files_bytes", "max_output_files",
                                                "live_output_bytes") if k in out}
        if c.heartbeat_interval is None:
            self.heartbeat_interval = float(out["heartbeat_interval"])
        log.info("registered as pilot %s on %s (%s)", self.pilot_id, c.machine, out["endpoint"])

    def run(self) -> str:
        """Run until idle, drained or stopped; return why it ended."""
        self.sandbox.check()  # before registering: a pilot that cannot sandbox runs nothing
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.cfg.isolation == "user":
            self.workdir.chmod(0o711)  # the payload's user reaches its own job dir only
        try:
            self.register()
        except (ClientError, OSError):
            if not self.orphaned():
                raise
            return self._end(self._orphan_reason())
        threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True).start()
        if self.cfg.metadata_url:
            threading.Thread(target=self._watch_metadata, name="metadata", daemon=True).start()
        while not self.stopping.is_set():
            cores, mem, slots = self.free()
            if self.draining.is_set() or slots <= 0 or cores <= 0:
                if self.draining.is_set() and not self.jobs:
                    return self._end("drained: the controller is removing this machine")
                with self.changed:
                    self.changed.wait(0.5)
                continue
            with self.lock:
                idle = not self.jobs and time.monotonic() - self.last_busy > self.cfg.idle_timeout
            if idle:
                return self._end(f"idle for more than {self.cfg.idle_timeout:.0f}s")
            if not self.jobs and self.orphaned():
                return self._end(self._orphan_reason())
            if self.cfg.time_left(time.time()) == 0 and not self.jobs:
                return self._end("its time is up (deadline)")
            for job, token, lease_until in self._match(cores, mem, slots):
                self._start(job, token, lease_until)
        return self._end(self.exit_reason or "stopped")

    def _orphan_reason(self) -> str:
        return (f"the controller has been unreachable for more than "
                f"{self.cfg.orphan_timeout:.0f}s (orphan timeout)")

    def _end(self, why: str) -> str:
        self.exit_reason = why
        log.info("pilot exiting: %s", why)
        return why

    def _match(self, cores: int, mem: int, slots: int) -> list[tuple[dict[str, Any], str, float]]:
        with self.lock:
            idle_left = self.cfg.idle_timeout - (time.monotonic() - self.last_busy)
        wait = max(0.0, min(self.cfg.poll_wait, idle_left if not self.jobs else self.cfg.poll_wait))
        ask: dict[str, Any] = {"free_cores": cores, "free_memory_mb": mem, "free_slots": slots,
                               "wait": round(wait, 1)}
        left = self.cfg.time_left(time.time())
        if left is not None:
            ask["time_left"] = left  # no job that would outlive this pilot
        sent = time.time()  # the lease counts from here: never later than the controller's
        try:
            out = self.client.call("POST", f"/api/v1/pilots/{self.pilot_id}/match", ask,
                                   timeout=wait + 15)
        except ClientError as e:
            if e.status in (401, 404):  # revoked, or the controller forgot this pilot
                self.exit_reason = f"the controller no longer accepts this pilot: {e}"
                self.stopping.set()
                return []
            log.error("match refused: %s", e)
            self.stopping.wait(2)
            return []
        except OSError:
            return []  # stopping while the controller was unreachable
        if not out:
            return []
        self._drain(out)
        return [(m["job"], m["token"], sent + m.get("lease", float("inf")))
                for m in out["matches"]]

    def _start(self, job: dict[str, Any], token: str, lease_until: float) -> None:
        run = JobRun(job, token, self.workdir, self.cfg.controller_url, self.cfg.stop_grace,
                     self.sandbox, self.own, self.url_allow)
        run.lease_until = lease_until
        with self.lock:
            self.jobs[run.id] = run
            self.last_busy = time.monotonic()
        if self.stopping.is_set():
            run.stop_reason = "interrupted"
            run.interrupted_by = self.exit_reason or "SIGTERM"
        threading.Thread(target=self._execute, args=(run,), name=f"job-{run.id}",
                         daemon=True).start()

    def _execute(self, run: JobRun) -> None:
        try:
            try:
                run.prepare()
                if run.stop_reason is None:
                    run.start()
            except Exception as e:  # any failure to start is the job's failure, with why
                log.warning("job %s could not start: %s", run.id, e)
                self._finish(run, "failed", None, f"could not start: {e}"[:2000])
                return
            if run.proc is None:
                self._finish(run, "interrupted", None, "pilot stopping before start")
                return
            self._beat([run])  # matched -> running now, not at the next beat
            outcome = run.wait()
            self._live([run])  # the rest of its live output
            base = f"/api/v1/pilots/{self.pilot_id}/jobs/{run.id}"
            if run.job.get("outputs") and run.dirfd is not None:
                try:
                    why = upload(self.client, base, run.attempt or 0, run.dirfd,
                                 run.job["outputs"], self.limits)
                except (ClientError, OSError) as e:
                    why = str(e)
                if why:
                    log.warning("output files of job %s not uploaded: %s", run.id, why)
            out, err, cut = run.output(self.cfg.max_output_bytes)
            try:
                self.client.call("POST", f"/api/v1/pilots/{self.pilot_id}/jobs/{run.id}/output",
                                 {"stdout": out, "stderr": err, "truncated": cut,
                                  "attempt": run.attempt})
            except (ClientError, OSError) as e:
                log.warning("output of job %s not uploaded: %s", run.id, e)
            self._finish(run, outcome.status, outcome.exit_code, outcome.reason)
        finally:
            run.cleanup()
            with self.changed:
                self.jobs.pop(run.id, None)
                self.last_busy = time.monotonic()
                self.changed.notify_all()

    def _finish(self, run: JobRun, status: str, code: int | None, reason: str | None) -> None:
        try:
            self.client.call("POST", f"/api/v1/pilots/{self.pilot_id}/jobs/{run.id}/report",
                             {"status": status, "exit_code": code, "reason": reason,
                              "attempt": run.attempt})
            log.info("job %s %s (exit %s)", run.id, status, code)
        except ClientError as e:
            log.warning("report of job %s refused: %s", run.id, e)
        except OSError as e:
            log.warning("report of job %s not delivered: %s", run.id, e)

    # heartbeats --------------------------------------------------------------------------
    def _beat(self, runs: list[JobRun]) -> None:
        """Heartbeat: renew the leases of the attempts the controller still calls ours (from
        when the heartbeat was sent), stop the killed ones, kill at once the ones that are no
        longer ours."""
        sent = time.time()
        lease = min((r.lease_until - sent for r in runs), default=30.0)
        try:
            out = self.client.call(
                "POST", f"/api/v1/pilots/{self.pilot_id}/heartbeat",
                {"jobs": [{"id": r.id, "attempt": r.attempt, "progress": r.progress()}
                          for r in runs]},
                timeout=max(1.0, min(15.0, lease / 3)), retry=False)
        except ClientError as e:
            if e.status == 404:
                return
            if e.status == 401:  # expired, or revoked (its machine lost): nothing is ours now
                log.warning("heartbeat refused: %s; stopping every payload and leaving", e)
                self.exit_reason = f"the controller no longer accepts this pilot: {e}"
                self.stopping.set()
                for run in runs:
                    run.revoke()
                return
            log.warning("heartbeat refused: %s", e)
            return
        except OSError as e:
            log.warning("heartbeat failed: %s", e)
            return
        stop, lost = set(out.get("stop", [])), set(out.get("lost", []))
        for run in runs:
            if run.id in lost:
                log.info("job %s attempt %s is no longer this pilot's: killing it", run.id,
                         run.attempt)
                run.revoke()
            elif run.id in stop:
                log.info("controller says stop job %s", run.id)
                run.stop("killed")
            elif "lease" in out:
                run.renew(sent + float(out["lease"]))
        self._drain(out)

    def _drain(self, answer: dict[str, Any]) -> None:
        """The controller says (in a heartbeat's or a match's answer) it removes this machine."""
        if answer.get("drain") and not self.draining.is_set():
            log.info("controller is removing this machine: draining")
            self.draining.set()

    def _heartbeats(self) -> None:
        """Renew the leases of the jobs held. With none, nothing is sent: the match long-poll
        keeps the pilot known alive and says when the machine drains."""
        while not self.stopping.wait(self.heartbeat_interval):
            with self.lock:
                runs = list(self.jobs.values())
            if runs:
                self._beat(runs)
                self._live(runs)

    def _live(self, runs: list[JobRun]) -> None:
        """Send what each running payload wrote since the last time (bounded)."""
        limit = self.limits.get("live_output_bytes", 16384)
        for run in runs:
            got = run.fresh(limit) if limit and run.attempt else []
            if any(got):
                try:
                    self.client.call("POST", f"/api/v1/pilots/{self.pilot_id}/jobs/{run.id}"
                                     "/live", {"attempt": run.attempt, "stdout": got[0],
                                               "stderr": got[1]}, retry=False, timeout=5)
                except (ClientError, OSError) as e:
                    log.info("live output of job %s not sent: %s", run.id, e)

    def goodbye(self, why: str) -> None:
        """Tell the controller this pilot is leaving (best effort: it also notices silence)."""
        if self.pilot_id is None:
            return
        try:
            q = urllib.parse.urlencode({"reason": why[:500]})
            self.client.call("DELETE", f"/api/v1/pilots/{self.pilot_id}?{q}", timeout=5,
                             retry=False)
        except (ClientError, OSError) as e:
            log.info("goodbye not delivered: %s", e)

    def interrupt(self, why: str = "SIGTERM") -> None:
        """SIGTERM or a spot interruption notice: stop taking work, interrupt running jobs
        (they report 'interrupted' and are rescheduled without using a retry)."""
        self.exit_reason = why
        self.stopping.set()
        with self.lock:
            runs = list(self.jobs.values())
        for r in runs:
            r.interrupted_by = why
            r.stop("interrupted")

    def _watch_metadata(self) -> None:
        """On a spot instance: poll the metadata service for an interruption notice."""
        assert self.cfg.metadata_url
        while not self.stopping.wait(self.cfg.metadata_interval):
            notice = spot_notice(self.cfg.metadata_url)
            if notice:
                log.warning("spot interruption notice: %s", notice)
                self.interrupt(f"spot interruption notice: {notice}")
                return

    def wait_jobs(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.jobs and time.monotonic() < deadline:
                self.changed.wait(0.2)
