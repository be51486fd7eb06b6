"""Issue 11 against a real controller: idempotent submissions, storage faults with their true
cause, a graceful stop that does not wait for long-polls, and a lost local machine whose
payloads are all dead before its jobs run elsewhere."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.faults import UNSANDBOXED
from controller.cli.client import ApiClient, ApiError
from tests.conftest import LOCAL, REPO, Controller, end_controller, free_port, sh, wait_until
from tests.integration.test_api import register


def test_an_idempotency_key_answers_the_same_ids_and_refuses_another_body(make_controller):
    ctrl = make_controller()
    jobs = {"jobs": [sh("true"), sh("echo two")]}
    with ctrl.client("alice") as c:
        first = c.post("/api/v1/jobs/bulk", json=jobs, headers={"Idempotency-Key": "k-1"})
        again = c.post("/api/v1/jobs/bulk", json=jobs, headers={"Idempotency-Key": "k-1"})
        other = c.post("/api/v1/jobs/bulk", json={"jobs": [sh("false")]},
                       headers={"Idempotency-Key": "k-1"})
        one = c.post("/api/v1/jobs", json=sh("true"), headers={"Idempotency-Key": "k-2"})
        one_again = c.post("/api/v1/jobs", json=sh("true"), headers={"Idempotency-Key": "k-2"})
        bad = c.post("/api/v1/jobs", json=sh("true"), headers={"Idempotency-Key": "a b"})
        listed = c.get("/api/v1/jobs").json()
    assert first.status_code == again.status_code == 201
    assert first.json()["ids"] == again.json()["ids"] == [1, 2]
    assert other.status_code == 409 and "another request" in other.json()["detail"]
    assert one.json()["ids"] == one_again.json()["ids"] == [3]
    assert bad.status_code == 422
    assert [j["id"] for j in listed] == [1, 2, 3]  # nothing doubled


def test_the_cli_client_retries_a_submission_under_the_same_key(make_controller):
    """The controller is down when the client first tries; it keeps retrying with one key
    and gets its ids once the controller is back."""
    ctrl = make_controller()
    ctrl.stop()
    api = ApiClient(ctrl.url, ctrl.tokens["alice"], retry_for=30)
    threading.Timer(1.0, ctrl.start).start()
    out = api.submit([sh("true"), sh("true")], key="cli-retry")
    assert out["ids"] == [1, 2]
    assert api.submit([sh("true"), sh("true")], key="cli-retry")["ids"] == [1, 2]
    with pytest.raises(ApiError) as e:
        api.submit([sh("false")], key="cli-retry")
    assert e.value.status == 409


# storage faults ---------------------------------------------------------------------------
@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path` (root only), unmounted afterwards."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Fill the disk holding `path` with one file; return it."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)  # unbuffered: ENOSPC comes here, not at close
    return filler


def test_a_full_disk_answers_507_keeps_serving_reads_and_recovers(make_controller, tmp_path):
    with small_disk(tmp_path / "disk", "16m") as disk:
        ctrl = make_controller(start=False)
        shutil.move(str(ctrl.database), disk / "cloudpilot.db")
        ctrl.database.symlink_to(disk / "cloudpilot.db")
        ctrl.start()
        (first,) = ctrl.submit("alice", sh("true"))
        filler = fill(disk)
        many = {"jobs": [sh("echo " + "x" * 200)] * 2000}
        with ctrl.client("alice") as c:
            full = c.post("/api/v1/jobs/bulk", json=many)
            assert full.status_code == 507, full.text
            assert "disk holding the database is full" in full.json()["detail"]
            assert "database or disk is full" in full.json()["detail"]  # SQLite's own words
            assert c.get(f"/api/v1/jobs/{first}").status_code == 200  # reads still work
            assert [j["id"] for j in c.get("/api/v1/jobs").json()] == [first]
            filler.unlink()  # space returns: writes work again, no restart
            ok = c.post("/api/v1/jobs/bulk", json=many)
            assert ok.status_code == 201, ok.text
            assert len(c.get("/api/v1/jobs", params={"limit": 5000}).json()) == 2001
        ctrl.stop()


def serve_fails(config: Path) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-m", "controller", "serve", "--config", str(config)],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    return r.returncode, r.stderr


def test_starting_on_a_bad_database_path_says_what_is_wrong_in_one_line(make_controller,
                                                                         tmp_path):
    ctrl = make_controller(start=False)
    cases = {}
    ctrl.settings["database"] = "/etc/hostname/cloudpilot.db"  # a file where a folder must be
    ctrl.write_config()
    cases["not a folder"] = serve_fails(ctrl.config)
    with small_disk(tmp_path / "full", "1m") as disk:
        fill(disk)
        ctrl.settings["database"] = str(disk / "cloudpilot.db")
        ctrl.write_config()
        cases["full"] = serve_fails(ctrl.config)
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copy(ctrl.database, ro / "cloudpilot.db")
    subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], check=True)
    try:
        ctrl.settings["database"] = str(ro / "cloudpilot.db")
        ctrl.write_config()
        cases["read-only"] = serve_fails(ctrl.config)
    finally:
        subprocess.run(["umount", str(ro)], check=False)
    expect = {"not a folder": "is a file, not a folder", "full": "full", "read-only": "read-only"}
    for case, (rc, err) in cases.items():
        assert rc != 0, case
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cloudpilot: "), (case, err)
        assert expect[case] in lines[0], (case, err)


# graceful stop ----------------------------------------------------------------------------
def test_a_graceful_stop_releases_long_polls_at_once(make_controller):
    ctrl = make_controller(long_poll_max=30)
    answers: list[httpx.Response] = []
    pid = register(ctrl, machine="m1", cores=2, memory_mb=1024, slots=2)
    who = pid if pid in ctrl.tokens else "pilot:manual"  # its own credential, where it has one

    def poll() -> None:
        with ctrl.client(who) as c:
            answers.append(c.post(f"/api/v1/pilots/{pid}/match", json={
                "free_cores": 2, "free_memory_mb": 1024, "free_slots": 2, "wait": 30}))

    waiting = [threading.Thread(target=poll) for _ in range(5)]
    for t in waiting:
        t.start()
    ctrl.wait_long_polls(5)
    assert ctrl.proc is not None
    started = time.monotonic()
    ctrl.proc.send_signal(signal.SIGTERM)
    ctrl.proc.wait(10)
    took = time.monotonic() - started
    for t in waiting:
        t.join(5)
    assert took < 2.0, f"graceful stop took {took:.1f}s"
    assert [a.status_code for a in answers] == [503] * 5
    assert all("stopping" in a.json()["detail"] for a in answers)


# a lost local machine ---------------------------------------------------------------------
def test_a_lost_local_machine_is_killed_whole_before_its_jobs_run_again(make_controller,
                                                                        tmp_path):
    """The pilot is SIGKILLed; its payload (own session, and a grandchild that called setsid)
    keeps running until the driver kills the machine's whole process tree; only then does
    the job run again: its two attempts never overlap in the ledger."""
    ledger = tmp_path / "ledger"
    script = (f"echo start $$ >> {ledger}; "
              f"setsid sh -c 'while :; do echo tick $$ >> {ledger}; sleep 0.1; done' & "
              f"while :; do echo tick $$ >> {ledger}; sleep 0.1; done")
    ctrl = make_controller(endpoints=[{**LOCAL, "max_machines": 1, "slots": 1, **UNSANDBOXED}])
    try:
        _second_attempt_after_the_first_is_dead(ctrl, ledger, script)
    finally:
        for line in ledger.read_text().splitlines() if ledger.exists() else []:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(line.split()[-1]), signal.SIGKILL)


def _second_attempt_after_the_first_is_dead(ctrl, ledger: Path, script: str) -> None:
    (jid,) = ctrl.submit("alice", sh(script, max_runtime=60))
    j = ctrl.wait_state(jid, "running", timeout=20)
    wait_until(lambda: ledger.exists() and ledger.read_text().count("tick") > 4, 10)
    pid = int(next(ctrl.root.glob(f"data*/**/local/{j['machine']}/pilot.pid")).read_text())
    os.kill(pid, signal.SIGKILL)  # the pilot alone: its payloads live on in their sessions
    wait_until(lambda: ledger.read_text().count("start") == 2, 30, what="a second attempt")
    lines = ledger.read_text().splitlines()
    second = lines.index(next(x for x in lines[1:] if x.startswith("start")))
    first_pids = {x.split()[1] for x in lines[:second] if x.startswith("tick")}
    assert len(first_pids) == 2
    after = {x.split()[1] for x in lines[second:] if x.startswith("tick")}
    assert not (first_pids & after), "the first attempt still ran after the second started"
    assert not any(os.path.exists(f"/proc/{p}") and _alive(int(p)) for p in first_pids)
    ev = ctrl.events(jid)
    assert "machine lost: pilot process gone" in [e["reason"] for e in ev]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def admin_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller", "admin", *args, "--config",
                           str(config)], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_a_backup_taken_under_load_restores_into_a_fresh_data_dir(make_controller, tmp_path):
    """Issue 26: `cloudpilot admin backup` copies the live SQLite database while jobs run and
    submissions keep coming; `admin restore` makes it the database of a fresh data dir; the
    controller started there has the jobs, tokens, plans and machines, the jobs that ran at
    the backup's time rescheduled as interrupted (no retry used), and runs every job to its
    end."""
    ep = {**LOCAL, **UNSANDBOXED}  # the slow payloads wait for a file of the test's
    ctrl = make_controller(endpoints=[ep])
    if ctrl.db_url:
        pytest.skip("SQLite's backup: PostgreSQL's pg_dump is tested in tests/unit")
    *quick, = ctrl.submit("alice", *[sh("true")] * 4)
    go = tmp_path / "go"  # the slow jobs run until it exists: surely running at the backup
    slow = ctrl.submit("alice", *[sh(f"while [ ! -e {go} ]; do sleep 0.2; done")] * 2)
    wait_until(lambda: all(ctrl.job(j)["state"] == "done" for j in quick)
               and all(ctrl.job(j)["state"] == "running" for j in slow), 30,
               what="the quick jobs done and the slow ones running")
    with ctrl.client() as c:
        plans_before = sorted(p["id"] for p in c.get("/api/v1/plans").json())
        machines_before = sorted(m["name"] for m in c.get("/api/v1/machines").json())
    assert plans_before and machines_before
    acked: list[int] = []
    stop = threading.Event()

    def submit() -> None:  # the load: one submission every 50 ms while the backup runs
        while not stop.is_set():
            acked.extend(ctrl.submit("bob", sh("true")))
            stop.wait(0.05)

    loader = threading.Thread(target=submit)
    loader.start()
    try:
        wait_until(lambda: len(acked) >= 3, what="submissions under way")
        before_backup = list(acked)
        r = admin_cli(ctrl.config, "backup", str(tmp_path / "backup.db"))
    finally:
        stop.set()
        loader.join()
    assert r.returncode == 0 and "backed up to" in r.stdout, r.stdout + r.stderr
    assert all(ctrl.job(j)["state"] == "running" for j in slow)
    again = admin_cli(ctrl.config, "backup", str(tmp_path / "backup.db"))
    assert again.returncode == 1 and "exists already" in again.stderr
    end_controller(ctrl)  # the old controller, its machines and their payloads are gone

    fresh = Controller(tmp_path / "restored", free_port(), dict(ctrl.settings), [ep])
    fresh.root.mkdir()
    fresh.write_config()
    fresh.tokens = dict(ctrl.tokens)
    r = admin_cli(fresh.config, "restore", str(tmp_path / "backup.db"))
    assert r.returncode == 0, r.stdout + r.stderr
    held = re.search(r"restored; (\d+) jobs held at the backup's time rescheduled", r.stdout)
    assert held and int(held[1]) >= 2, r.stdout  # the slow ones, and any of bob's
    r = admin_cli(fresh.config, "restore", str(tmp_path / "backup.db"))
    assert r.returncode == 1 and "exists already" in r.stderr  # never over a database
    try:
        fresh.start()
        with fresh.client() as c:
            plans = {p["id"]: p for p in c.get("/api/v1/plans").json()}
            assert set(plans_before) <= set(plans)  # and the new controller's own since
            names = {m["name"] for m in c.get("/api/v1/machines",
                                              params={"all": True}).json()}
            assert set(machines_before) <= names
        with fresh.client("bob") as c:  # a user's token of before works
            theirs = {j["id"] for j in c.get("/api/v1/jobs", params={"limit": 1000}).json()}
        assert set(before_backup) <= theirs <= set(acked)
        for j in slow:
            ev = fresh.events(j)
            assert any(e["to_state"] == "rescheduled" and "restored from a backup" in
                       e["reason"] for e in ev), ev
        go.touch()
        for j in (*quick, *slow, *theirs):
            fresh.wait_state(j, "done", timeout=60)
        assert all(fresh.job(j)["retries"] == 0 for j in slow)
        assert [fresh.job(j)["reschedules"] for j in slow] == [1, 1]
    finally:
        end_controller(fresh)
