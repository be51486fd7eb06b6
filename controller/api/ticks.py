"""Recorded scheduler ticks: explain an endpoint's last decision, list and fetch ticks (for
`cloudpilot replay`)."""

from __future__ import annotations

import time
import tomllib
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, ValidationError

from controller.api.deps import AdminAuth, SettingsDep, StoreDep, UserAuth, sees
from controller.api.responses import ExplainOut, TickOut, TickSummaryOut
from controller.config.settings import Settings
from controller.domain.accounting import moment
from controller.errors import InvalidInput
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


class WhatIfIn(BaseModel):
    since: str = Field("7d", max_length=40, description="the window's start: back from now "
                       "(7d, 12h) or an ISO 8601 time")
    until: str | None = Field(None, max_length=40, description="its end, the same way "
                              "(default: now)")
    config: str = Field(max_length=1_000_000, description="the other settings: a cloudpilot "
                        "config's TOML text")
    endpoint: str | None = Field(None, max_length=64, description="the endpoint replayed "
                                 "(default: the one that ran the most of the window's jobs)")


class WhatIfOut(BaseModel):
    """Two replays of the window side by side (controller/simulate/whatif.py WhatIf)."""

    endpoint: str
    since: float
    until: float
    jobs: int = Field(description="jobs replayed")
    left_out: int = Field(description="submitted in the window but not replayed (never ran, "
                          "or ran elsewhere)")
    boot_time: float = Field(description="the mean measured boot time the replays use (s)")
    lower_bound: dict[str, Any]
    current: dict[str, Any] = Field(description="the replay with the settings in force")
    other: dict[str, Any] = Field(description="the replay with the other config")
    real_cost: float = Field(description="USD: the endpoint's machines started in the window")
    real_machine_hours: float
    seconds: float = Field(description="how long the two replays took")
    notes: list[str]
    error: dict[str, float | None] = Field(description="the replay of the settings in force "
                                           "against what happened: relative error of its cost "
                                           "and machine-hours (null: nothing to compare)")


@router.post("/whatif", response_model=WhatIfOut)
def whatif(body: WhatIfIn, store: StoreDep, settings: SettingsDep,
           p: AdminAuth) -> dict[str, Any]:
    """What would it have cost? The jobs recorded in the window replayed through the
    simulator with the settings in force and with `config`'s, side by side, and the replay
    of the settings in force against what really happened (its error)."""
    from controller.simulate.whatif import whatif as replay_window  # (the simulator: on use)

    now = time.time()
    try:
        since = moment(body.since, now)
        until = now if body.until is None else moment(body.until, now)
        data = tomllib.loads(body.config)
        # pydantic-settings reads its sources from keys like _env_file, _secrets_dir: never
        # from a request (they would name files on this host)
        bad = sorted(k for k in data if k.startswith("_"))
        if bad:
            raise ValueError(f"config: unknown settings {bad}")
        other = Settings(**data)
    except (ValueError, tomllib.TOMLDecodeError) as e:  # (ValidationError is a ValueError)
        raise InvalidInput(f"whatif: {_first_line(e)}") from None
    return replay_window(store, settings, other, since, until, body.endpoint, now).to_dict()


def _first_line(e: Exception) -> str:
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        return f"config {'.'.join(map(str, err['loc']))}: {err['msg']}"
    return str(e).splitlines()[0][:300]
