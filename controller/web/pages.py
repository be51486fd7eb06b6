"""The dashboard's pages. Each renders a whole page, or only its live part when htmx asks
(HX-Request), which the page's script does whenever the event stream reports a change."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from controller.api.deps import SettingsDep, StoreDep
from controller.api.jobs import waiting_reasons
from controller.api.monitoring import day_start
from controller.api.ticks import explain
from controller.auth import Role
from controller.domain.accounting import window
from controller.domain.endpoints import EndpointState
from controller.domain.machines import Machine
from controller.domain.plans import PlanState
from controller.errors import NotFound
from controller.store import Store, accounting, sessions, views
from controller.web.render import HERE, bars, chart, templates
from controller.web.session import SECURITY_HEADERS, WebSession

router = APIRouter(include_in_schema=False)

STATIC = {  # what /static serves: name -> (file, media type)
    "htmx.min.js": ("vendor/htmx-2.0.11.min.js", "text/javascript"),
    "app.js": ("app.js", "text/javascript"),
    "app.css": ("app.css", "text/css"),
}
CHART_HOURS = 6
JOB_STATES = ("waiting", "matched", "running", "done", "failed", "killed", "stalled",
              "rescheduled")


def page(request: Request, name: str, s: sessions.Session | None, live: str,
         status: int = 200, **ctx: Any) -> HTMLResponse:
    """The page `name` (templates/NAME.html); its live part alone (templates/_NAME.html)
    for htmx's refreshes. `live` names the event kinds that refresh it."""
    partial = request.headers.get("hx-request") == "true"
    ctx.update(session=s, user=s.principal if s else None, live=live, part=f"_{name}.html",
               title=name.capitalize(),
               admin=bool(s and s.principal.role == Role.ADMIN), now=time.time(),
               error=request.query_params.get("error"),
               message=request.query_params.get("message"))
    r = templates.TemplateResponse(request, f"_{name}.html" if partial else "base.html",
                                   ctx, status_code=status)
    r.headers.update(SECURITY_HEADERS)
    r.headers["Cache-Control"] = "no-store"
    return r


def refuse(request: Request, s: sessions.Session, what: str) -> HTMLResponse:
    return page(request, "refused", s, "", status=403, what=what)


def _owner(s: sessions.Session) -> str | None:
    return None if s.principal.role == Role.ADMIN else s.principal.owner


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        raise NotFound(f"no static file {name}")
    path, media = STATIC[name]
    return FileResponse(HERE / "static" / path, media_type=media,
                        headers={"Cache-Control": "public, max-age=3600"})


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, s: WebSession, store: StoreDep,
             settings: SettingsDep) -> HTMLResponse:
    now = time.time()
    o = views.overview(store, settings.machine_prices(), _owner(s), now, day_start(now))
    samples = views.samples(store, now - CHART_HOURS * 3600)
    start = samples[0].at if samples else now - CHART_HOURS * 3600  # a young controller: its life
    charts = [chart(title, [(x.at, float(getattr(x, key))) for x in samples], start, now)
              for title, key in (("waiting jobs", "waiting"), ("running jobs", "running"),
                                 ("machines", "machines"))]
    return page(request, "overview", s, "job machine endpoint plan", o=o, charts=charts,
                states=JOB_STATES, hours=CHART_HOURS,
                spend_rate=sum(o.spend_rate.values()), spent_today=sum(o.spent_today.values()))


@router.get("/jobs", response_class=HTMLResponse)
def jobs(request: Request, s: WebSession, store: StoreDep,
         state: str | None = None, owner: str | None = None, endpoint: str | None = None,
         tq: int | None = Query(None, description="task queue"),
         sort: Literal["new", "old", "changed"] = "new", after: str | None = None,
         size: int = Query(50, ge=1, le=500)) -> HTMLResponse:
    mine = _owner(s)
    if mine is not None:
        owner = mine  # a user sees their own jobs only
    filters = {k: v for k, v in (("state", state or None), ("owner", owner or None),
                                 ("endpoint", endpoint or None), ("tq", tq)) if v is not None}
    p = views.job_page(store, state=state or None, owner=owner or None,
                       endpoint=endpoint or None, task_queue=tq, sort=sort, after=after,
                       size=size)
    return page(request, "jobs", s, "job", jobs=p.rows, next_after=p.next_after, sort=sort,
                filters=filters, after=after, states=JOB_STATES,
                owners=views.owners(store) if mine is None else [mine],
                endpoints=[e.name for e in store.endpoints.find()])


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job(job_id: int, request: Request, s: WebSession, store: StoreDep,
        settings: SettingsDep) -> HTMLResponse:
    j = store.jobs.get(job_id)
    mine = _owner(s)
    if mine is not None and j.owner != mine:
        raise NotFound(f"no job {job_id}")  # do not reveal other owners' jobs
    events = store.jobs.events(job_id)
    out = store.jobs.output(job_id)
    machine = None
    if j.machine:
        try:
            machine = store.machines.get(j.machine)
        except NotFound:
            machine = None
    attempts = [e for e in events if e["to_state"] == "matched"]
    price = _price(machine, settings.machine_prices()) if machine else 0.0
    ep = settings.endpoint(j.endpoint) if j.endpoint else None
    slots = (machine.info.get("slots") if machine else None) or (ep.slots if ep else 1)
    ran = (j.ended_at or time.time()) - j.started_at if j.started_at else 0.0
    return page(request, "job", s, "job", j=j, events=events, attempts=attempts,
                machine=machine.to_dict() if machine else None, price=price,
                cost=price * ran / 3600 / max(slots, 1),
                ran=ran if j.started_at else None, waiting=waiting_reasons(store, settings)(j),
                stdout=_tail(out["stdout"] if out else ""),
                stderr=_tail(out["stderr"] if out else ""),
                truncated=bool(out and out["truncated"]), files=store.files.files(job_id))


def _tail(text: str | None, limit: int = 8192) -> str:
    text = text or ""
    return text if len(text) <= limit else "…" + text[-limit:]


def _price(m: Machine, prices: dict[str, float]) -> float:
    return float(m.info.get("price") or prices.get(m.endpoint, 0.0))


@router.get("/endpoints", response_class=HTMLResponse)
def endpoints(request: Request, s: WebSession, store: StoreDep,
              settings: SettingsDep) -> HTMLResponse:
    machines = store.machines.find(live=True)
    busy = store.jobs.busy_by_machine()
    refusals, now = store.refusals.find(), time.time()  # issue 24: offers the cloud refused
    sites = []
    for ep in store.endpoints.find():
        cfg = settings.endpoint(ep.name)
        if cfg is None:
            continue
        sites.append({
            "name": ep.name, "driver": ep.driver,
            # down/up show at once (the loop writes the state at its next tick)
            "state": "down" if ep.down_by else (
                "ok" if ep.state == EndpointState.DOWN else ep.state.value),
            "message": ep.message, "down_by": ep.down_by, "config": cfg,
            "machines": [dict(m.to_dict(), jobs=busy.get(m.name, 0)) for m in machines
                         if m.endpoint == ep.name],
            "events": store.endpoints.events(ep.name, 5),
            "refusals": [(r, r.blocks(now)) for e, r in refusals if e == ep.name],
            "hosts": store.hosts.find(ep.name) if cfg.driver == "ssh" else None,
            "host_events": store.hosts.events(ep.name, limit=5)
            if cfg.driver == "ssh" else [],
        })
    return page(request, "endpoints", s, "machine endpoint host plan", sites=sites)


@router.get("/machines", response_class=HTMLResponse)
def machines(request: Request, s: WebSession, store: StoreDep, settings: SettingsDep,
             all: bool = False) -> HTMLResponse:
    now = time.time()
    busy = store.jobs.busy_by_machine()
    prices = settings.machine_prices()
    rows = []
    for m in store.machines.find(live=not all):
        price = _price(m, prices)
        ended = m.updated_at if m.state in views.FINAL_MACHINE_STATES else None
        jobs = busy.get(m.name, 0)
        rows.append(dict(m.to_dict(), jobs=jobs, price=price, age=(ended or now) - m.created_at,
                         idle=None if jobs or ended else now - (m.last_busy_at
                                                                 or m.created_at),
                         cost=price * ((ended or now) - m.created_at) / 3600))
    return page(request, "machines", s, "machine", machines=rows, all=all)


@router.get("/plans", response_class=HTMLResponse)
def plans(request: Request, s: WebSession, store: StoreDep) -> HTMLResponse:
    if s.principal.role != Role.ADMIN:
        return refuse(request, s, "the plans page")
    open_plans = store.plans.find(states=[PlanState.PENDING, PlanState.APPROVED], limit=100)
    recent = [p for p in store.plans.find(limit=30) if p.state not in
              (PlanState.PENDING, PlanState.APPROVED)]
    return page(request, "plans", s, "plan", open_plans=open_plans, recent=recent)


@router.get("/scheduler", response_class=HTMLResponse)
async def scheduler(request: Request, s: WebSession, store: StoreDep,
                    settings: SettingsDep) -> HTMLResponse:
    if s.principal.role != Role.ADMIN:
        return refuse(request, s, "the scheduler page")
    decisions = await run_in_threadpool(_decisions, store, settings, s)
    return page(request, "scheduler", s, "plan machine", decisions=decisions)


def _decisions(store: Store, settings: Any, s: sessions.Session) -> list[dict[str, Any]]:
    out = []
    for ep in settings.endpoints:
        try:
            d = explain(ep.name, store, settings, s.principal).model_dump()
        except NotFound:
            d = {"endpoint": ep.name, "tick": None}
        d["recent"] = store.ticks.find(ep.name, changes=True, limit=5)
        out.append(d)
    return out


@router.get("/usage", response_class=HTMLResponse)
async def usage(request: Request, s: WebSession, store: StoreDep, settings: SettingsDep,
                by: Literal["owner", "group", "endpoint"] = "owner",
                since: str = "30d") -> HTMLResponse:
    """Accounting by day (GET /api/v1/usage as a page): a user sees their own rows only."""
    if s.principal.role != Role.ADMIN and by != "owner":
        return refuse(request, s, f"usage by {by}")
    bad, status = None, 200
    try:
        span = window(since)
    except ValueError as e:
        bad, status, since, span = str(e), 422, "30d", window("30d")
    now = time.time()
    ledger = await run_in_threadpool(accounting.usage, store, settings.machine_prices(),
                                     now - span, now)
    mine = _owner(s)
    rows = [r for r in ledger.rows(by) if mine is None or r.name == mine]
    days: dict[str, list[float]] = {}
    for r in rows:
        d = days.setdefault(r.day, [0.0, 0.0])
        d[0] += r.total.money
        d[1] += r.total.core_hours
    idle = {} if mine is not None else ledger.idle
    for day, _ in idle:
        days.setdefault(day, [0.0, 0.0])
    order = sorted(days)
    charts = [bars("USD charged to jobs per day", [(d, days[d][0]) for d in order]),
              bars("core-hours per day", [(d, days[d][1]) for d in order])]
    return page(request, "usage", s, "job machine", status, rows=rows, by=by, since=since,
                bad=bad,
                charts=charts, idle=sorted(idle.items()),
                spent=ledger.spent if mine is None else {})
