"""Typed dependencies shared by the routers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from controller.auth import Principal, Role
from controller.errors import Forbidden, Unauthorized
from controller.settings import Settings
from controller.store import Store


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    return get_store(request).tokens.verify(token.strip())


def _require(*roles: Role) -> Callable[[Principal], Principal]:
    def dep(p: Annotated[Principal, Depends(get_principal)]) -> Principal:
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
