"""Recorded scheduler ticks: explain an endpoint's last decision, list and fetch ticks (for
`cloudpilot replay`)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from controller.api.deps import AdminAuth, SettingsDep, StoreDep, UserAuth, sees
from controller.api.responses import ExplainOut, TickOut, TickSummaryOut
from controller.services.plans import configured

router = APIRouter(prefix="/api/v1", tags=["ticks"])


@router.get("/endpoints/{name}/explain", response_model=ExplainOut)
def explain(name: str, store: StoreDep, settings: SettingsDep, p: UserAuth) -> ExplainOut:
    """The endpoint's last scheduler tick, whatever its kind: its inputs (task queues,
    machines or hosts, spot prices, budget, config), the candidate offers with their prices,
    and why each machine was started or removed. Users see their own task queues in it;
    admins all."""
    tick = store.ticks.latest(configured(settings, name))
    inputs, decision = tick["inputs"], tick["decision"]
    launches = {x["name"]: x for x in decision["launches"]}
    return ExplainOut(
        tick=tick["id"], at=tick["at"], endpoint=name,
        config=inputs["spec"],
        queues=[q for q in inputs["queues"] if sees(p, q.get("owner"))],
        machines=inputs["machines"],
        prices=inputs["prices"],
        budget=inputs["budget"],
        candidates=decision["candidates"],
        started=[{"name": n, **({k: v for k, v in launches[n].items() if k != "name"}
                                if n in launches else {"reason": "; ".join(
                                    decision["reasons"]) or "wanted"})}
                 for n in decision["start"]],
        removed=decision["remove"],
        demand=decision["demand"],
        reasons=decision["reasons"],
        refusals=inputs.get("refusals", []),
    )


@router.get("/ticks", response_model=list[TickSummaryOut])
def ticks(store: StoreDep, p: AdminAuth, endpoint: str | None = None,
          changes: bool = Query(False, description="only ticks that started or removed"),
          limit: int = Query(50, ge=1, le=1000)) -> list[TickSummaryOut]:
    """Recorded ticks, newest first (id, endpoint, time, machines started and removed)."""
    return [TickSummaryOut(**t) for t in store.ticks.find(endpoint, changes, limit)]


@router.get("/ticks/{tick_id}", response_model=TickOut)
def tick(tick_id: int, store: StoreDep, p: AdminAuth) -> TickOut:
    """One recorded tick: its full inputs and decision."""
    return TickOut(**store.ticks.get(tick_id))
