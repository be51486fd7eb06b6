"""Logging in to the dashboard and guarding its forms.

A token is exchanged once for a session: a random id in a cookie that is HttpOnly (scripts
cannot read it), SameSite=Strict (other sites' pages do not send it) and Secure over HTTPS.
Every state-changing request must carry the session's CSRF secret (a hidden form field or the
X-CSRF-Token header) and, when the browser says where it comes from, come from this origin."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from controller.api.viewer import SESSION_COOKIE
from controller.auth import Role
from controller.errors import Forbidden
from controller.store import sessions

LOGIN_COOKIE = "cloudpilot_login"  # the login form's own CSRF secret (before any session)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


async def current_session(request: Request) -> sessions.Session | None:
    sid = request.cookies.get(SESSION_COOKIE)
    if not sid:
        return None
    return await run_in_threadpool(sessions.get, request.app.state.store, sid)


async def require_session(request: Request) -> sessions.Session:
    """The logged-in session, or a redirect to the login page."""
    s = await current_session(request)
    if s is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(303, "log in first", headers={"Location": f"/login?next={target}"})
    return s


WebSession = Annotated[sessions.Session, Depends(require_session)]


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another origin (Origin, or else
    Referer); a request that names neither is judged by its CSRF secret alone."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return source is None
    u = urlsplit(source)
    return (u.scheme, u.netloc) == (request.url.scheme, request.url.netloc)


async def form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (the dashboard's forms), first values only."""
    body = (await request.body())[:65536].decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


async def checked_form(request: Request, session: sessions.Session) -> dict[str, str]:
    """The form of a state-changing request, after the cross-site checks."""
    fields = await form(request)
    sent = request.headers.get("x-csrf-token") or fields.get("csrf", "")
    if not same_origin(request):
        raise Forbidden("refused: a cross-site request")
    if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise Forbidden("refused: missing or wrong CSRF token (reload the page)")
    return fields


def new_login_secret() -> str:
    return secrets.token_urlsafe(24)


def login_roles() -> tuple[Role, ...]:
    return (Role.USER, Role.ADMIN)
