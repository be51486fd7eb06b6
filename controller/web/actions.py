"""What the dashboard changes: log in and out, kill a job, approve a plan, take an endpoint up
or down, let a host join or leave. Each action checks the session's CSRF secret and origin,
calls the same function as its API route, and sends the browser back to the page
(POST-redirect-GET), with the outcome in the address."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from controller.api.deps import SettingsDep, StoreDep
from controller.api.schemas import HostIn
from controller.api.viewer import SESSION_COOKIE
from controller.auth import Principal, Role
from controller.errors import CloudpilotError, Forbidden, Unauthorized
from controller.services import jobs as job_service
from controller.services import membership
from controller.services import plans as plan_service
from controller.store import sessions
from controller.web.pages import page
from controller.web.session import (
    LOGIN_COOKIE,
    WebSession,
    checked_form,
    current_session,
    form,
    login_roles,
    new_login_secret,
    same_origin,
)

router = APIRouter(include_in_schema=False)


def _cookie(request: Request, response: Response, name: str, value: str, max_age: int,
            path: str = "/") -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


def _back(target: str, **outcome: str) -> RedirectResponse:
    """A redirect to a page of this site (never elsewhere), with the outcome shown there."""
    u = urlsplit(target)
    local = target.startswith("/") and not target.startswith("//") and "\\" not in target
    path, kept = (u.path, u.query) if local else ("/", "")
    query = "&".join([*([kept] if kept and not outcome else []),
                      *(f"{k}={quote(v)}" for k, v in outcome.items())])
    return RedirectResponse(path + (f"?{query}" if query else ""), status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str = "/") -> HTMLResponse:
    if await current_session(request) is not None:
        return _back(next)  # type: ignore[return-value]
    secret = new_login_secret()
    r = page(request, "login", None, "", login_csrf=secret, next=next)
    _cookie(request, r, LOGIN_COOKIE, secret, 600, path="/login")
    return r


@router.post("/login")
async def login(request: Request) -> Response:
    fields = await form(request)
    secret = request.cookies.get(LOGIN_COOKIE, "")
    if not same_origin(request) or not secret or not hmac.compare_digest(
            secret.encode(), fields.get("csrf", "").encode()):
        raise Forbidden("refused: a cross-site or stale login form (reload the page)")
    store = request.app.state.store
    token = fields.get("token", "").strip()
    try:
        p: Principal = await run_in_threadpool(store.tokens.verify, token)
        if p.role not in login_roles():
            raise Unauthorized(f"a {p.role.value} token cannot log in to the dashboard")
    except Unauthorized as e:
        r = page(request, "login", None, "", status=401, login_csrf=secret,
                 next=fields.get("next", "/"), failed=e.message)
        return r
    sid, _ = await run_in_threadpool(sessions.create, store, p.token_id,
                                     request.app.state.settings.session_lifetime)
    r2 = _back(fields.get("next", "/"))
    _cookie(request, r2, SESSION_COOKIE, sid,
            int(request.app.state.settings.session_lifetime))
    r2.delete_cookie(LOGIN_COOKIE, path="/login")
    return r2


@router.post("/logout")
async def logout(request: Request, s: WebSession) -> Response:
    await checked_form(request, s)
    await run_in_threadpool(sessions.end, request.app.state.store,
                            request.cookies.get(SESSION_COOKIE, ""))
    r = _back("/login", message="logged out")
    r.delete_cookie(SESSION_COOKIE, path="/")
    return r


async def _act(request: Request, s: sessions.Session, back: str, fn: Callable[[], Any],
               done: str, admin: bool = True, wake: bool = True) -> Response:
    """Run one action through the services (after the CSRF checks), wake the loop and the
    waiting pilots, and send the browser back with its outcome."""
    await checked_form(request, s)
    if admin and s.principal.role != Role.ADMIN:
        raise Forbidden("only an admin may do this")
    try:
        await run_in_threadpool(fn)
    except CloudpilotError as e:
        return _back(back, error=e.message)
    if wake:
        request.app.state.notifier.fire()
    return _back(back, message=done)


@router.post("/ui/jobs/{job_id}/kill")
async def kill(job_id: int, request: Request, s: WebSession, store: StoreDep) -> Response:
    return await _act(request, s, f"/jobs/{job_id}",
                      lambda: job_service.kill(store, s.principal, job_id),
                      f"job {job_id} killed", admin=False, wake=False)


@router.post("/ui/plans/{plan_id}/approve")
async def approve(plan_id: int, request: Request, s: WebSession, store: StoreDep) -> Response:
    return await _act(request, s, "/plans",
                      lambda: plan_service.approve(store, plan_id, s.principal.operator),
                      f"plan {plan_id} approved: the loop applies it now")


@router.post("/ui/endpoints/{name}/up")
async def up(name: str, request: Request, s: WebSession, store: StoreDep,
             settings: SettingsDep) -> Response:
    return await _act(request, s, "/endpoints",
                      lambda: plan_service.up(store, settings, name, s.principal.operator),
                      f"{name}: up")


@router.post("/ui/endpoints/{name}/down")
async def down(name: str, request: Request, s: WebSession, store: StoreDep,
               settings: SettingsDep) -> Response:
    return await _act(request, s, "/endpoints",
                      lambda: plan_service.down(store, settings, name, s.principal.operator),
                      f"{name}: down; its machines are being removed")


@router.post("/ui/endpoints/{name}/hosts")
async def join(name: str, request: Request, s: WebSession, store: StoreDep,
               settings: SettingsDep) -> Response:
    fields = await form(request)
    try:
        body = HostIn(name=fields.get("name", ""), address=fields.get("address", ""),
                      port=int(fields.get("port") or 22))
    except (ValidationError, ValueError) as e:
        await checked_form(request, s)
        return _back("/endpoints", error=f"host not joined: {_first_error(e)}")

    def joined() -> None:
        membership.ssh_endpoint(settings, name)
        membership.join(store, name, body.name, body.address, body.port, source="api",
                        slots=body.slots, host_key=body.host_key)
    return await _act(request, s, "/endpoints", joined, f"host {body.name} joins {name}")


@router.post("/ui/endpoints/{name}/hosts/{host}/leave")
async def leave(name: str, host: str, request: Request, s: WebSession, store: StoreDep,
                settings: SettingsDep) -> Response:
    def left() -> None:
        membership.ssh_endpoint(settings, name)
        membership.leave(store, name, host, source="api")
    return await _act(request, s, "/endpoints", left, f"host {host} leaves {name}")


def _first_error(e: Exception) -> str:
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        return f"{'.'.join(map(str, err['loc']))}: {err['msg']}"
    return str(e)
