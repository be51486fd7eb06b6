"""Who is reading: a bearer token, or else the dashboard's session cookie. Only for reads (GET):
a state-changing dashboard request goes through controller/web/, which checks its CSRF token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from controller.api.deps import get_principal
from controller.auth import Principal, Role
from controller.errors import Forbidden, Unauthorized
from controller.store import sessions

SESSION_COOKIE = "cloudpilot_session"


async def session_principal(request: Request) -> Principal | None:
    sid = request.cookies.get(SESSION_COOKIE)
    if not sid:
        return None
    s = await run_in_threadpool(sessions.get, request.app.state.store, sid)
    return s.principal if s else None


async def get_viewer(request: Request) -> Principal:
    if request.headers.get("authorization"):
        p = await get_principal(request)
    else:
        found = await session_principal(request)
        if found is None:
            raise Unauthorized("log in (a session cookie) or send a bearer token")
        p = found
    if p.role not in (Role.USER, Role.JOB, Role.ADMIN):
        raise Forbidden(f"a {p.role.value} token may not do this (needs: user, job, admin)")
    return p


Viewer = Annotated[Principal, Depends(get_viewer)]
