"""Hosts of SSH endpoints: list them, let hosts join and leave (admin), and their events.

Joining records a wish (controller/services/membership.py); the endpoint's worker reaches
the host over SSH (never this request)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from controller.api.deps import AdminAuth, SettingsDep, StoreDep, UserAuth
from controller.api.responses import HostChangeOut, HostEventOut, HostOut
from controller.api.schemas import HostIn
from controller.services.membership import join, leave, ssh_endpoint

router = APIRouter(prefix="/api/v1/endpoints", tags=["hosts"])


@router.get("/{endpoint}/hosts", response_model=list[HostOut])
def hosts(endpoint: str, store: StoreDep, settings: SettingsDep, p: UserAuth) -> list[HostOut]:
    """The endpoint's hosts: membership (joining, member, left), its machine's state, facts,
    failures and the last error."""
    ep = ssh_endpoint(settings, endpoint)
    machines = {m.name: m for m in store.machines.find(endpoint)}
    busy = store.jobs.busy_by_machine()
    out = []
    for h in store.hosts.find(endpoint):
        m = machines.get(h.machine)
        out.append(HostOut(
            name=h.name, machine=h.machine, address=h.address, port=h.port, source=h.source,
            membership=h.membership.value, joined_at=h.joined_at,
            facts=None if h.facts is None else dict(h.facts), failures=h.failures,
            last_error=h.last_error, slots=h.slots or ep.slots,
            machine_state=m.state.value if m else None, reason=m.reason if m else None,
            jobs=busy.get(h.machine, 0)))
    return out


@router.get("/{endpoint}/hosts/events", response_model=list[HostEventOut])
def host_events(endpoint: str, store: StoreDep, settings: SettingsDep, p: UserAuth,
                host: str | None = None,
                limit: int = Query(200, ge=1, le=5000)) -> list[HostEventOut]:
    """Hosts joining and leaving, facts, host keys trusted on first use, failures."""
    ssh_endpoint(settings, endpoint)
    return [HostEventOut(**e) for e in store.hosts.events(endpoint, host, limit)]


@router.post("/{endpoint}/hosts", status_code=201, response_model=HostChangeOut)
def add_host(endpoint: str, body: HostIn, request: Request, store: StoreDep,
             settings: SettingsDep, p: AdminAuth) -> HostChangeOut:
    """A host joins: it takes work once the loop reaches it over SSH."""
    ssh_endpoint(settings, endpoint)
    host = join(store, endpoint, body.name, body.address, body.port, source="api",
                slots=body.slots, host_key=body.host_key)
    request.app.state.notifier.fire()
    return HostChangeOut.of(host)


@router.delete("/{endpoint}/hosts/{host}", response_model=HostChangeOut)
def remove_host(endpoint: str, host: str, request: Request, store: StoreDep,
                settings: SettingsDep, p: AdminAuth) -> HostChangeOut:
    """A host leaves: the loop stops its pilot (its jobs go back to the queue)."""
    ssh_endpoint(settings, endpoint)
    h = leave(store, endpoint, host, source="api")
    request.app.state.notifier.fire()
    return HostChangeOut.of(h)
