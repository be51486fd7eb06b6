"""GET /metrics (Prometheus text format; an admin or a metrics token) and GET
/api/v1/overview (jobs by state, machines by endpoint and state, spend: what `cloudpilot
watch` and the dashboard's overview show)."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.api.deps import AnyPrincipal, SettingsDep, StoreDep, UserAuth
from controller.api.responses import AmountOut, IdleOut, OverviewOut, UsageOut, UsageRowOut
from controller.api.viewer import Viewer
from controller.auth import Role
from controller.domain.accounting import Amount, window
from controller.errors import Forbidden, InvalidInput
from controller.metrics import Metrics
from controller.store import accounting, views

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", response_class=Response, responses={200: {
    "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
    "description": "Prometheus text format"}})
def metrics(request: Request, p: AnyPrincipal) -> Response:
    """Every metric in the README's table. Scraped with an admin token or a metrics token
    (`cloudpilot admin create-token --metrics`)."""
    if p.role not in (Role.ADMIN, Role.METRICS):
        raise Forbidden(f"a {p.role.value} token may not scrape metrics (needs: admin, metrics)")
    m: Metrics = request.app.state.metrics
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


def day_start(now: float) -> float:
    """Local midnight before `now`."""
    return datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0,
                                               microsecond=0).timestamp()


@router.get("/api/v1/overview", response_model=OverviewOut)
def overview(store: StoreDep, settings: SettingsDep, p: Viewer) -> OverviewOut:
    """Jobs by state (yours, or everyone's for an admin), machines by endpoint and state, and
    spend per endpoint: USD per hour now, USD today (since local midnight) and in all."""
    now = time.time()
    seen = views.overview(store, settings.machine_prices(),
                          None if p.role == Role.ADMIN else p.owner, now, day_start(now))
    return OverviewOut(**seen.to_dict())


def _amount(a: Amount) -> AmountOut:
    return AmountOut(**{k: round(v, 6) for k, v in dataclasses.asdict(a).items()})


@router.get("/api/v1/usage", response_model=UsageOut)
def usage(store: StoreDep, settings: SettingsDep, p: UserAuth,
          by: Literal["owner", "group", "endpoint"] = "owner",
          since: str = Query("30d", description="the window back from now: 30d, 12h, 90m")
          ) -> UsageOut:
    """Accounting: core-hours and money per owner, group or endpoint, by day (UTC). A
    machine's cost is split among the jobs it held by core-seconds; while it held none, the
    cost is its endpoint's idle money. Users see their own owner rows only."""
    now = time.time()
    try:
        start = now - window(since)
    except ValueError as e:
        raise InvalidInput(str(e)) from None
    if not p.is_admin and by != "owner":
        raise Forbidden(f"a {p.role.value} token sees its own usage only (by=owner; by={by} "
                        "needs: admin)")
    ledger = accounting.usage(store, settings.machine_prices(), start, now)
    rows = [UsageRowOut(day=r.day, name=r.name, total=_amount(r.total),
                        by_status={k: _amount(a) for k, a in r.by_status.items()})
            for r in ledger.rows(by) if p.is_admin or r.name == p.owner]
    idle = [IdleOut(day=d, endpoint=e, money=round(v, 6))
            for (d, e), v in sorted(ledger.idle.items())] if p.is_admin else []
    spent = {e: round(v, 6) for e, v in ledger.spent.items()} if p.is_admin else {}
    return UsageOut(by=by, since=start, until=now, rows=rows, idle=idle, spent=spent)
