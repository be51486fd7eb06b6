"""GET /metrics (Prometheus text format; an admin or a metrics token) and GET
/api/v1/overview (jobs by state, machines by endpoint and state, spend: what `cloudpilot
watch` and the dashboard's overview show)."""

from __future__ import annotations

import time
from datetime import datetime

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.api.deps import AnyPrincipal, SettingsDep, StoreDep
from controller.api.responses import OverviewOut
from controller.api.viewer import Viewer
from controller.auth import Role
from controller.errors import Forbidden
from controller.metrics import Metrics, configured_prices
from controller.store import views

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
    seen = views.overview(store, configured_prices(settings),
                          None if p.role == Role.ADMIN else p.owner, now, day_start(now))
    return OverviewOut(**seen.to_dict())
