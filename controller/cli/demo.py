"""`cloudpilot demo`: the whole loop on one machine.

A controller on a temporary database with a local endpoint; a mixed batch of jobs from two
users (short ones, failing ones, one needing more cores than any machine has); live progress;
a summary once the queue has drained and the idle machines are gone."""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from controller.app import create_app
from controller.auth import Role
from controller.cli.client import ApiClient, ApiError
from controller.config.settings import Settings, endpoint_config
from controller.server import mark_closing
from controller.store import Store

TIME_LIMIT = 55.0
FILE_JOB, LIVE_JOB = 1, 2  # alice's first two jobs: one keeps a file, one is followed live


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_isolation() -> str:
    """The demo sandboxes payloads with bubblewrap where it is installed; it installs nothing,
    so on a machine without it the demo asks for no isolation, and says so loudly."""
    return "bwrap" if shutil.which("bwrap") else "none"


def demo_settings(root: Path, port: int) -> Settings:
    return Settings(
        database=root / "cloudpilot.db", data_dir=root / "data", port=port,
        loop_interval=0.5, lease=20, sample_interval=2,
        endpoints=[endpoint_config(
            name="local", cores=2, memory_mb=2048, slots=2, tags=["linux"], max_machines=3,
            max_starts_per_cycle=2, idle_timeout=3, heartbeat_interval=1, lost_after=15,
            boot_timeout=30, isolation=demo_isolation())],
    )


def demo_jobs() -> dict[str, list[dict[str, Any]]]:
    def sh(script: str, name: str, **req: Any) -> dict[str, Any]:
        return {"executable": "/bin/sh", "arguments": ["-c", script], "name": name,
                "requirements": {"max_runtime": 60, **req}}

    alice = [sh(f"echo simulating event batch {i}; sleep {1 + i % 3}; echo done", f"sim-{i}")
             for i in range(10)]
    # the first keeps a file (fetched back at the end); the second's output is followed live
    alice[0]["arguments"][1] += "; printf 'batch,events\\n0,1000\\n' > events.csv"
    alice[0]["outputs"] = ["events.csv"]
    alice[1]["arguments"][1] = ("for k in 1 2 3 4 5 6; do echo simulated event $k; sleep 0.5;"
                                " done")
    alice.append(sh("echo 'needs a big machine'", "big", cores=16))
    bob = [sh(f"echo analysing file {i}; sleep 1", f"ana-{i}") for i in range(6)]
    bob += [sh("echo 'missing input' >&2; exit 3", "broken-1"),
            sh("echo 'missing input' >&2; exit 3", "broken-2")]
    return {"alice": alice, "bob": bob}


class Server:
    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, host=settings.host, port=settings.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the controller did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        mark_closing(self.app)  # open event streams (a dashboard) end too
        self.server.should_exit = True
        self.thread.join(timeout=20)


def _line(summary: dict[str, Any], elapsed: float) -> str:
    j, m = summary["jobs"], summary["machines"]
    order = ["waiting", "matched", "running", "done", "failed", "killed"]
    jobs = " ".join(f"{s} {j.get(s, 0):>2}" for s in order)
    up = m.get("running", 0)
    boot = m.get("booting", 0) + m.get("requested", 0)
    return f"[{elapsed:5.1f}s] jobs: {jobs} | machines: {up} up, {boot} booting"


def _users(settings: Settings, root: Path) -> tuple[dict[str, str], str]:
    """The demo's users (alice, bob) and an admin, each token also in ROOT/WHO.token."""
    store = Store(settings.database)
    tokens = {}
    for user, group in (("alice", "physics"), ("bob", "biology")):
        store.tokens.create_user(user, group)
        tokens[user] = store.tokens.issue(Role.USER, owner=user, note="demo")
    admin = store.tokens.issue(Role.ADMIN, note="demo")
    store.close()
    for who, token in (("admin", admin), *tokens.items()):
        f = root / f"{who}.token"
        f.write_text(token + "\n")
        f.chmod(0o600)
    return tokens, admin


def _announce(settings: Settings, root: Path, out: Any) -> None:
    print(f"cloudpilot demo: controller on {settings.url}, local endpoint 'local' "
          f"(up to 3 machines x 2 slots of 2 cores), data in {root}", file=out)
    if settings.endpoints[0].isolation == "none":
        print("!!! bubblewrap (bwrap) is not installed: the demo runs its payloads WITHOUT a "
              "sandbox (isolation = none) only because the demo asks for it. Install "
              "bubblewrap for the default isolation. !!!", file=out)
    else:
        print("payloads run sandboxed by bubblewrap (isolation = bwrap)", file=out)
    print(f"dashboard: {settings.url}/  (log in with the token in {root}/admin.token, or "
          f"alice.token, bob.token)", file=out, flush=True)


def _submit(url: str, tokens: dict[str, str], out: Any) -> tuple[int, dict[int, str]]:
    """Each user's demo jobs: how many, and those that will wait (with why)."""
    stuck: dict[int, str] = {}
    n = 0
    for user, jobs in demo_jobs().items():
        res = ApiClient(url, tokens[user]).submit(jobs)
        n += len(res["ids"])
        stuck.update({int(k): v for k, v in res["unmatchable"].items()})
        print(f"{user} submitted {len(res['ids'])} jobs", file=out)
    for jid, why in stuck.items():
        print(f"job {jid} will wait: {why}", file=out)
    return n, stuck


def _until_drained(watch: ApiClient, n: int, stuck: int, start: float, out: Any) -> int:
    """A status line as the queue drains (rewritten in place on a terminal); 1 if the time
    limit comes first."""
    tty = out.isatty() if hasattr(out, "isatty") else False
    last = ""
    rc = 0
    while True:
        elapsed = time.monotonic() - start
        s = watch.summary()
        line = _line(s, elapsed)
        if tty:
            _say(out, "\r" + line, end="")
        elif line.split("]", 1)[1] != last:
            _say(out, line)
            last = line.split("]", 1)[1]
        j = s["jobs"]
        settled = sum(j.get(k, 0) for k in ("done", "failed", "killed")) + stuck
        if settled >= n and not s["machines"]:
            break
        if elapsed > TIME_LIMIT:
            print("\ndemo: time limit reached before the queue drained", file=out)
            rc = 1
            break
        time.sleep(0.5)
    if tty:
        print(file=out)
    return rc


def _stay(settings: Settings, root: Path, out: Any) -> None:
    print(f"\nthe controller stays up: dashboard {settings.url}/ (token in "
          f"{root}/admin.token); Ctrl-C to stop", file=out, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print(file=out)


def run_demo(keep: bool = False, out: Any = None, stay: bool = False) -> int:
    out = out or sys.stdout
    root = Path(tempfile.mkdtemp(prefix="cloudpilot-demo-"))
    settings = demo_settings(root, free_port())
    tokens, admin = _users(settings, root)
    _announce(settings, root, out)
    start = time.monotonic()
    try:
        with Server(settings):
            watch = ApiClient(settings.url, admin)
            n, stuck = _submit(settings.url, tokens, out)
            follower = threading.Thread(target=_follow, args=(
                ApiClient(settings.url, tokens["alice"]), LIVE_JOB, out), daemon=True)
            follower.start()
            rc = _until_drained(watch, n, len(stuck), start, out)
            follower.join(5)
            _summary(watch, out, time.monotonic() - start)
            _fetch_back(ApiClient(settings.url, tokens["alice"]), FILE_JOB, root / "outputs",
                        out)
            if stay:
                _stay(settings, root, out)
    finally:
        if keep:
            print(f"kept {root}", file=out)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return rc


def _summary(c: ApiClient, out: Any, elapsed: float) -> None:
    jobs = c.jobs(limit=1000)
    machines = c.machines(all=True)
    by: dict[str, int] = {}
    for j in jobs:
        by[j["state"]] = by.get(j["state"], 0) + 1
    print(f"\nsummary after {elapsed:.1f}s: " + ", ".join(f"{n} {s}" for s, n in sorted(
        by.items())), file=out)
    print(f"machines used: {len(machines)} ("
          + ", ".join(f"{m['name']} {m['state']}" for m in machines) + ")", file=out)
    for j in jobs:
        if j["state"] == "failed":
            print(f"  job {j['id']} {j['name']} failed on {j['machine']}: {j['reason']}",
                  file=out)
        if j["state"] == "waiting":
            print(f"  job {j['id']} {j['name']} still waiting: {j['waiting_reason']}", file=out)
    first = next((j for j in jobs if j["state"] == "done"), None)
    if first:
        o = c.output(first["id"])
        print(f"  job {first['id']} ran on {first['machine']}; its output: "
              f"{o['stdout'].strip()!r}", file=out)


_SAYING = threading.Lock()  # the status lines and the followed job's lines: whole lines


def _say(out: Any, text: str, end: str = "\n") -> None:
    """One line, written whole (print writes the text and its end apart, and the follower
    thread's lines would land inside the status lines)."""
    with _SAYING:
        out.write(text + end)
        out.flush()


def _follow(c: ApiClient, job_id: int, out: Any) -> None:
    """Print a running job's output as its pilot sends it (each heartbeat)."""
    try:
        for piece in c.follow_output(job_id):
            for line in piece["text"].splitlines():
                _say(out, f"  live, job {job_id}: {line}")
    except ApiError as e:
        print(f"  live output of job {job_id}: {e}", file=out)


def _fetch_back(c: ApiClient, job_id: int, into: Path, out: Any) -> None:
    """Download a job's output files (each checked against its SHA-256) and show them."""
    for path in c.download(job_id, into):
        text = path.read_text()
        print(f"  job {job_id}'s output file {path.name} fetched back ({len(text)} bytes, "
              f"SHA-256 checked): {text.strip()!r}", file=out)
