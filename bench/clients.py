"""The queue benchmark's load generator: HTTP clients for bulk submission and for pilots
asking for work, in this process (threads) or in several processes (each with its threads),
and what CPU each side spent.

Each client process measures its own CPU time (os.times(), all its threads) and its wall
time over the timed part only: bodies are encoded, pilots registered and connections made
before every client passes the start barrier. Pilots hold what they are given: a pilot of
64 cores holds about 25 jobs of the benchmark, after which the controller offers it nothing
more (it is bounded by what it registered minus what it holds). So each client registers
enough pilots for its share of the matches and moves to the next one when the pilot it asks
for is full (as the client counts from the jobs it got); the pilot states its real free cores,
memory and slots in each request. A pilot asking with wait 0 is answered 204 (and asks again)
when the controller leaves the job to a fuller machine asking at the same moment (issue 13's
packing): those answers are counted, and a client gives a pilot up only after
RETRY_EMPTY of them in a row."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import multiprocessing
import os
import queue
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

PHASE_LIMIT = 300.0  # seconds: a match phase's clients stop asking after this (default)
START_TIMEOUT = 180.0  # seconds for every client to be ready (pilots registered)
RETRY_EMPTY = 50  # 204s in a row before a client moves to its next pilot


# CPU time of processes ------------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _procs() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU ticks of it and of its children it has waited for)."""
    out: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        rest = raw[raw.rindex(b")") + 2:].split()
        # after "pid (comm) ": state ppid ... utime(12th) stime cutime cstime
        out[int(name)] = (int(rest[1]), sum(int(x) for x in rest[11:15]))
    return out


def tree_cpu(*roots: int | None) -> float:
    """CPU seconds (user + system) of each root process and everything below it, including
    children that ended and were waited for (they count in their parent's cutime/cstime)."""
    procs = _procs()
    below: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        below.setdefault(ppid, []).append(pid)
    ticks, todo = 0, [r for r in roots if r is not None and r in procs]
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        ticks += procs[pid][1]
        todo += below.get(pid, [])
    return ticks / CLK_TCK


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


# HTTP -----------------------------------------------------------------------------------------
class Client(Protocol):
    def post(self, path: str, body: bytes, token: str) -> tuple[int, bytes]: ...
    def close(self) -> None: ...


class HttpxClient:
    """httpx, one connection kept alive (what the benchmark has always used)."""

    def __init__(self, url: str) -> None:
        self.c = httpx.Client(base_url=url, timeout=120)

    def post(self, path: str, body: bytes, token: str) -> tuple[int, bytes]:
        r = self.c.post(path, content=body, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        return r.status_code, r.content

    def close(self) -> None:
        self.c.close()


class PlainClient:
    """http.client: about a third of httpx's CPU per request (0.17 ms against 0.48 ms on this
    machine), so the load generator takes less of the CPU the controller needs. With
    `keep_alive` one connection serves all requests (made again if the server closed it);
    without, each request has a connection of its own, as the real pilot's urllib: then the
    requests spread over `serve --workers` processes, which take turns accepting connections
    on the shared socket, instead of each client staying with the worker that accepted its
    one connection."""

    def __init__(self, url: str, keep_alive: bool = True) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.keep_alive = keep_alive
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, token: str) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        if not self.keep_alive:
            headers["Connection"] = "close"
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            try:
                self.conn.request("POST", path, body=body, headers=headers)
                r = self.conn.getresponse()
                got = r.status, r.read()
                if not self.keep_alive:
                    self.close()
                return got
            except (http.client.RemoteDisconnected, ConnectionError,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


CLIENT_KINDS = ("httpx", "keep-alive", "per-request")


def make_client(kind: str, url: str) -> Client:
    """httpx (keep-alive), or http.client with one connection kept alive or one a request."""
    if kind == "httpx":
        return HttpxClient(url)
    return PlainClient(url, keep_alive=kind == "keep-alive")


# what a client process did --------------------------------------------------------------------
@dataclass
class Part:
    count: int = 0  # jobs submitted or matched
    requests: int = 0
    empty: int = 0  # 204: nothing for this pilot
    owners: Counter[str] = field(default_factory=Counter)
    ids: list[int] = field(default_factory=list)  # matched jobs
    errors: list[str] = field(default_factory=list)
    started: float = 0.0  # time.monotonic() (system-wide) when the timed part began
    ended: float = 0.0
    cpu: float = 0.0  # this process's CPU seconds over the timed part


@dataclass
class Outcome:
    """What all the clients of one phase did."""

    count: int
    requests: int
    empty: int
    seconds: float
    client_cpu: float  # CPU seconds of the client processes (0: clients in this process)
    owners: Counter[str]
    ids: list[int]
    errors: list[str]


# the clients' work ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SubmitWork:
    """Bulk requests: (user token, encoded body, jobs in it), one list per client thread."""

    per_thread: list[list[tuple[str, bytes, int]]]


@dataclass(frozen=True)
class MatchWork:
    """Pilots asking for work: per thread, how many jobs to get; how pilots are made."""

    targets: list[int]
    per_request: int
    admin_token: str
    endpoint: str
    machine: tuple[int, int, int]  # cores, memory_mb, slots a pilot registers with
    largest_job: tuple[int, int]  # cores, memory_mb of the largest job in the queue
    tag: str  # for machine names
    limit: float = PHASE_LIMIT  # seconds: stop asking after this, whatever is left
    wait: float = 0.0  # the long-poll each request allows (a real pilot's is its poll_wait)


def pilots_needed(target: int, machine: tuple[int, int, int],
                  largest: tuple[int, int]) -> int:
    """Pilots enough for `target` jobs: a pilot is left when it can no longer hold the
    largest job, so each takes at least this many."""
    cores, mem, slots = machine
    least = min(slots, math.ceil((cores - largest[0] + 1) / largest[0]),
                math.ceil((mem - largest[1] + 1) / largest[1]))
    return math.ceil(target / max(1, least)) + 2


def _submit_thread(client: Client, work: list[tuple[str, bytes, int]], part: Part,
                   lock: threading.Lock, go: threading.Event, ready: threading.Barrier) -> None:
    ready.wait()
    go.wait()
    n = requests = 0
    for token, body, size in work:
        status, data = client.post("/api/v1/jobs/bulk", body, token)
        requests += 1
        if status != 201:
            raise RuntimeError(f"bulk submit: HTTP {status}: {data[:500]!r}")
        got = len(json.loads(data)["ids"])
        if got != size:
            raise RuntimeError(f"bulk submit of {size} jobs answered {got} ids")
        n += got
    with lock:
        part.count += n
        part.requests += requests


def _register(client: Client, w: MatchWork, name: str) -> tuple[str, str]:
    status, data = client.post("/api/v1/admin/tokens", json.dumps(
        {"role": "pilot", "endpoint": w.endpoint}).encode(), w.admin_token)
    if status not in (200, 201):
        raise RuntimeError(f"bootstrap token: HTTP {status}: {data[:500]!r}")
    boot = json.loads(data)["token"]
    cores, mem, slots = w.machine
    status, data = client.post("/api/v1/pilots/register", json.dumps({
        "machine": name, "endpoint": w.endpoint, "cores": cores, "memory_mb": mem,
        "slots": slots, "version": "bench"}).encode(), boot)
    if status != 201:
        raise RuntimeError(f"register: HTTP {status}: {data[:500]!r}")
    got = json.loads(data)
    return got["pilot_id"], got["token"]


def _match_thread(client: Client, w: MatchWork, target: int, name: str, part: Part,
                  lock: threading.Lock, go: threading.Event, ready: threading.Barrier) -> None:
    pilots = [_register(client, w, f"{name}-{i}")
              for i in range(pilots_needed(target, w.machine, w.largest_job))]
    ready.wait()
    go.wait()
    deadline = time.monotonic() + w.limit
    owners: Counter[str] = Counter()
    ids: list[int] = []
    errors: list[str] = []
    requests = empty = 0
    big_cores, big_mem = w.largest_job
    at = 0
    while at < len(pilots) and len(ids) < target and time.monotonic() < deadline:
        pilot_id, credential = pilots[at]
        path = f"/api/v1/pilots/{pilot_id}/match"
        cores, mem, slots = w.machine
        in_a_row = 0
        while len(ids) < target and time.monotonic() < deadline:
            if cores < big_cores or mem < big_mem or slots < 1 or in_a_row >= RETRY_EMPTY:
                break  # full, as far as this client knows: the next pilot
            ask = min(w.per_request, slots, target - len(ids))
            body = json.dumps({"free_cores": cores, "free_memory_mb": mem,
                               "free_slots": ask, "wait": w.wait}).encode()
            status, data = client.post(path, body, credential)
            requests += 1
            if status == 204:
                empty += 1
                in_a_row += 1
                continue
            if status != 200:
                errors.append(f"HTTP {status}: {data[:300]!r}")
                if len(errors) > 20:
                    break
                continue
            in_a_row = 0
            for m in json.loads(data)["matches"]:
                job = m["job"]
                owners[job["owner"]] += 1
                ids.append(job["id"])
                cores -= int(job["requirements"]["cores"])
                mem -= int(job["requirements"]["memory_mb"])
                slots -= 1
        if len(errors) > 20:
            break
        at += 1
    with lock:
        part.count += len(ids)
        part.requests += requests
        part.empty += empty
        part.owners.update(owners)
        part.ids += ids
        part.errors += errors


def run_part(kind: str, url: str, work: SubmitWork | MatchWork, index: int,
             start: Any, client_kind: str) -> Part:
    """One client process's share: its threads get ready (connections, pilots), then all
    processes pass `start` together and the clock runs until this process's threads end."""
    part, lock = Part(), threading.Lock()
    go = threading.Event()
    n = len(work.per_thread) if isinstance(work, SubmitWork) else len(work.targets)
    ready = threading.Barrier(n + 1, timeout=START_TIMEOUT)
    clients = [make_client(client_kind, url) for _ in range(n)]
    failed: list[str] = []

    def guarded(fn: Callable[..., None], *a: Any) -> None:
        try:
            fn(*a)
        except BaseException:
            failed.append(traceback.format_exc(limit=4))
            ready.abort()
            go.set()

    threads = []
    for i in range(n):
        if isinstance(work, SubmitWork):
            args: tuple[Any, ...] = (_submit_thread, clients[i], work.per_thread[i])
        else:
            args = (_match_thread, clients[i], work, work.targets[i],
                    f"bench-{work.tag}-p{index}-t{i}")
        threads.append(threading.Thread(target=guarded, args=(*args, part, lock, go, ready),
                                        daemon=True))
    for t in threads:
        t.start()
    try:
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            start.abort()
            raise RuntimeError("a client failed before the start:\n"
                               + "\n".join(failed)) from None
        start.wait(timeout=START_TIMEOUT)
        part.started, cpu0 = time.monotonic(), own_cpu()
        go.set()
        for t in threads:
            t.join()
        part.ended, part.cpu = time.monotonic(), own_cpu() - cpu0
    finally:
        for c in clients:
            c.close()
    if failed:
        raise RuntimeError("a client failed:\n" + "\n".join(failed))
    return part


def _child(kind: str, url: str, work: SubmitWork | MatchWork, index: int, start: Any,
           results: Any, client_kind: str) -> None:
    try:
        results.put((index, run_part(kind, url, work, index, start, client_kind)))
    except BaseException as e:
        with contextlib.suppress(Exception):
            start.abort()
        results.put((index, f"{type(e).__name__}: {e}"))


def split(items: list[Any], n: int) -> list[list[Any]]:
    """items dealt round-robin into n lists."""
    return [items[i::n] for i in range(n)]


def shares(total: int, n: int) -> list[int]:
    return [total // n + (i < total % n) for i in range(n)]


@contextlib.contextmanager
def _spawned(n: int) -> Iterator[tuple[Any, Any, Any]]:
    ctx = multiprocessing.get_context("spawn")
    yield ctx, ctx.Barrier(n + 1), ctx.Queue()


def run(url: str, work_per_proc: list[SubmitWork | MatchWork], in_process: bool,
        client_kind: str) -> Outcome:
    """Run each work item in a client process of its own (or, `in_process`, the only item in
    a thread of this process); the phase's wall time runs from the earliest start to the
    latest end."""
    kind = "submit" if isinstance(work_per_proc[0], SubmitWork) else "match"
    parts: list[Part] = []
    if in_process:
        assert len(work_per_proc) == 1
        start = threading.Barrier(2, timeout=START_TIMEOUT)
        box: list[Part | BaseException] = []

        def one() -> None:
            try:
                box.append(run_part(kind, url, work_per_proc[0], 0, start, client_kind))
            except BaseException as e:
                box.append(e)

        t = threading.Thread(target=one, daemon=True)
        t.start()
        with contextlib.suppress(threading.BrokenBarrierError):
            start.wait()
        t.join()
        if isinstance(box[0], BaseException):
            raise box[0]
        parts = [box[0]]
        parts[0].cpu = 0.0  # this process's CPU includes the controller's when in a thread
    else:
        with _spawned(len(work_per_proc)) as (ctx, start, results):
            procs = [ctx.Process(target=_child, args=(kind, url, w, i, start, results,
                                                      client_kind), daemon=True)
                     for i, w in enumerate(work_per_proc)]
            for p in procs:
                p.start()
            problems: list[str] = []
            with contextlib.suppress(threading.BrokenBarrierError):
                start.wait(timeout=START_TIMEOUT)
            for _ in procs:
                try:
                    _, got = results.get(timeout=2 * PHASE_LIMIT + START_TIMEOUT)
                except queue.Empty:
                    problems.append("a client process did not answer")
                    break
                if isinstance(got, Part):
                    parts.append(got)
                else:
                    problems.append(got)
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
            if problems:
                raise RuntimeError("load generator: " + "; ".join(problems))
    owners: Counter[str] = Counter()
    for p in parts:
        owners.update(p.owners)
    return Outcome(
        count=sum(p.count for p in parts), requests=sum(p.requests for p in parts),
        empty=sum(p.empty for p in parts),
        seconds=max(p.ended for p in parts) - min(p.started for p in parts),
        client_cpu=sum(p.cpu for p in parts), owners=owners,
        ids=[i for p in parts for i in p.ids], errors=[e for p in parts for e in p.errors])
