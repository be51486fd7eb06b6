"""The FastAPI application: create_app(settings). Its lifespan owns the store and the
reconcile loop, so tests build an app on a temporary database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from controller.api import (
    admin,
    events,
    files,
    hosts,
    info,
    jobs,
    monitoring,
    pilots,
    plans,
    ticks,
)
from controller.api.limits import BodyLimit
from controller.api.schemas import ERRORS
from controller.blobs import open_blobs
from controller.config.settings import Settings
from controller.domain.placement import AskingPilots
from controller.domain.transitions import IllegalTransition
from controller.errors import CloudpilotError, StorageError, TemporaryError
from controller.logs import RequestLog
from controller.metrics import Metrics
from controller.notify import Notifier
from controller.reconcile.loop import Reconciler
from controller.server import ControllerServer
from controller.store import Store
from controller.store.channel import FORGET, WAKE
from controller.store.leader import Leadership
from controller.supervisor import serve_workers
from controller.web import actions, pages

log = logging.getLogger("cloudpilot")
LOOP_STOP_WAIT = 30.0  # seconds a stopping controller waits for the loop's step in progress


async def _run_loop(app: FastAPI, reconciler: Reconciler, leadership: Leadership,
                    interval: float, stop: asyncio.Event) -> None:
    """The reconcile loop, until `stop` is set: it then ends after the step in progress (a
    step runs in a thread that cancelling would not stop, and the store closes after it)."""
    notifier: Notifier = app.state.notifier
    leading = False
    while not stop.is_set():
        started = time.monotonic()
        try:
            # one process runs the loop (with PostgreSQL, the one holding its lock)
            if not await asyncio.to_thread(leadership.held):
                leading = False
                await asyncio.sleep(interval)
                continue
            if not leading:  # at start, or taking over: pick up what was left half done
                await asyncio.to_thread(reconciler.lead, leadership.epoch,
                                        leadership.leads_now)
                leading = True
            result = await asyncio.to_thread(reconciler.tick)
            if result.rescheduled:
                notifier.fire()
            # issue 12: tick duration, fleet samples for the dashboard, one log line a decision
            metrics: Metrics = app.state.metrics
            await asyncio.to_thread(metrics.after_tick, result, time.monotonic() - started)
        except StorageError as e:  # a full or read-only database, PostgreSQL unreachable (a
            # restart): say so in one line
            log.warning("reconcile tick failed: %s", e.message)
        except Exception:  # the loop must outlive any one tick's failure
            log.exception("reconcile tick failed")
        # sleep until the interval is over, or a bit after the queue changes
        if notifier.stopping or stop.is_set():
            return
        waits = {asyncio.ensure_future(notifier.changes().wait()),
                 asyncio.ensure_future(stop.wait())}
        _, pending = await asyncio.wait(waits, timeout=interval,
                                        return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()
        await asyncio.sleep(max(0.0, 0.2 - (time.monotonic() - started)))


def _heard(store: Store, notifier: Notifier, kind: str, arg: str) -> None:
    """A message from another controller process (controller/store/channel.py)."""
    if kind == WAKE:  # work arrived or came back there
        store.jobs.task_queues.changed()
        notifier.fire(int(arg) if arg.isdigit() else None, relay=False)
    elif kind == FORGET:
        store.forget(arg)


def _lifespan(settings: Settings, run_loop: bool) -> Callable[
        [FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """What the app owns while it runs: the store, the notifier's channel to other
    processes, the leadership, the reconcile loop (`run_loop`) and the files' purge."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store(settings.database, lease=settings.lease)
        store.usage.half_life = settings.fair_share_half_life
        store.endpoints.sync([e.model_dump(mode="json") for e in settings.endpoints])
        app.state.store = store
        notifier: Notifier = app.state.notifier
        # issue 12: /metrics, dashboard samples
        app.state.metrics = Metrics(store, settings, notifier.waiting)
        notifier.bind(asyncio.get_running_loop())
        # other controller processes on the same database (PostgreSQL): their submissions
        # wake our long-polls, their changes drop what we cached, and the other way round
        channel = store.channel()
        channel.start(lambda kind, arg: _heard(store, notifier, kind, arg))
        notifier.relay = lambda n: channel.send(WAKE, "" if n is None else str(n))
        leadership = store.leadership(settings.leader_lease)
        app.state.leadership = leadership
        task = None
        stop_loop = asyncio.Event()
        if run_loop:
            # tick_soon wakes this process's loop and no pilot (fire(0); not relayed: the
            # refused apply that asks for it ran in this loop)
            reconciler = Reconciler(settings, store, wake=notifier.fire,
                                    tick_soon=lambda: notifier.fire(0, relay=False))
            app.state.reconciler = reconciler
            task = asyncio.create_task(_run_loop(app, reconciler, leadership,
                                                 settings.loop_interval, stop_loop))
        purging = asyncio.create_task(files.purge_loop(app, min(
            300.0, max(1.0, settings.keep_outputs_for / 10))))  # issue 22: retention
        try:
            yield
        finally:
            purging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purging
            if task is not None:
                stop_loop.set()
                app.state.reconciler.close()  # cancel an Ansible run in progress
                try:  # the step in progress ends before the store closes under it
                    await asyncio.wait_for(asyncio.shield(task), timeout=LOOP_STOP_WAIT)
                except TimeoutError:
                    log.warning("the reconcile loop did not stop within %.0fs",
                                LOOP_STOP_WAIT)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            notifier.relay = None
            channel.close()
            leadership.close()
            store.close()

    return lifespan


def _error_handlers(app: FastAPI) -> None:
    """The one place exceptions become HTTP answers."""
    @app.exception_handler(CloudpilotError)
    async def _cloudpilot_error(request: Request, exc: CloudpilotError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else \
            {"Retry-After": "1"} if isinstance(exc, TemporaryError) else None
        body: dict[str, object] = {"detail": exc.message}
        if isinstance(exc, StorageError):
            log.warning("database error on %s: %s", request.url.path, exc.message)
        if exc.status_code == 422:  # every 422 has the one declared shape
            body["errors"] = [exc.message]
        return JSONResponse(body, exc.status_code, headers=headers)

    @app.exception_handler(IllegalTransition)
    async def _illegal(request: Request, exc: IllegalTransition) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 409)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            msg = "unknown field" if e.get("type") == "extra_forbidden" else e.get("msg", "")
            errors.append(f"{where}: {msg}" if where else msg)
        return JSONResponse({"detail": "invalid request: " + "; ".join(errors),
                             "errors": errors}, 422)

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError) -> JSONResponse:
        # a last guard: every path and body integer is bounded where it is declared
        msg = "a number is larger than the store holds"
        return JSONResponse({"detail": f"invalid request: {msg}", "errors": [msg]}, 422)


def create_app(settings: Settings, *, run_loop: bool = True) -> FastAPI:
    app = FastAPI(title="cloudpilot", version="0.1.0", lifespan=_lifespan(settings, run_loop),
                  description="A pilot-based workload management system for clouds.")
    app.state.settings = settings
    app.state.notifier = Notifier()
    app.state.asking = AskingPilots()  # pilots inside a match request (domain/placement.py)
    app.state.polls = {}  # pilot id -> the event its long-poll waits on (api/pilots.py)
    app.state.reconciler = None
    # issue 22: where job files and input sandboxes live (a folder, or an S3 bucket)
    app.state.blobs = open_blobs(settings.file_store, settings.data_dir,
                                 settings.file_store_endpoint_url, settings.file_store_region)
    for r in (jobs.router, pilots.router, info.router, admin.router, plans.router,
              ticks.router, hosts.router, events.router, monitoring.router, files.router):
        app.include_router(r, responses=ERRORS)  # every error a route can answer, declared
    for r in (pages.router, actions.router):  # the dashboard (controller/web/): HTML pages
        app.include_router(r)
    # the body's size, encoding and bulk count are checked before it is parsed
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes,
                       max_bulk_jobs=settings.max_bulk_jobs)
    app.add_middleware(RequestLog)  # one log line per request

    _error_handlers(app)
    return app


def serve(settings: Settings) -> None:
    """Run the controller until SIGTERM or SIGINT; a graceful stop takes under 2 s. With
    `workers` above 1, that many processes share the listening socket (controller/
    supervisor.py) and the database (PostgreSQL)."""

    def one(sock: socket.socket | None = None) -> None:
        ControllerServer(create_app(settings), host=settings.host, port=settings.port,
                         log_level="warning", log_config=None,
                         timeout_graceful_shutdown=1).run(sockets=None if sock is None
                                                          else [sock])

    if settings.workers == 1:
        one()
    else:
        serve_workers(settings, one)
