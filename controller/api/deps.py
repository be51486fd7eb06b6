"""Typed dependencies shared by the routers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from controller.auth import Principal, Role
from controller.config.settings import Settings
from controller.errors import Forbidden, Unauthorized
from controller.store import Store
from controller.store.tokens import TokenStore


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    tokens: TokenStore = request.app.state.store.tokens
    hit = tokens.cached(token)
    return hit if hit is not None else await run_in_threadpool(tokens.verify, token)


def _require(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def dep(p: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if p.role not in roles:
            allowed = ", ".join(r.value for r in roles)
            raise Forbidden(f"a {p.role.value} token may not do this (needs: {allowed})")
        return p

    return dep


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
AnyPrincipal = Annotated[Principal, Depends(get_principal)]
UserAuth = Annotated[Principal, Depends(_require(Role.USER, Role.JOB, Role.ADMIN))]
PilotAuth = Annotated[Principal, Depends(_require(Role.PILOT))]
AdminAuth = Annotated[Principal, Depends(_require(Role.ADMIN))]
