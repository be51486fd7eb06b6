"""Typed dependencies shared by the routers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Request
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


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    return token


async def get_principal(request: Request) -> Principal:
    tokens: TokenStore = request.app.state.store.tokens
    return await run_in_threadpool(tokens.verify, _bearer(request))


def _kind(p: Principal) -> str:
    return "bootstrap" if p.is_bootstrap else p.role.value


def _allowed(p: Principal, roles: tuple[Role, ...]) -> Principal:
    if p.role not in roles or p.is_bootstrap:
        allowed = ", ".join(r.value for r in roles)
        raise Forbidden(f"a {_kind(p)} token may not do this (needs: {allowed})")
    return p


def _require(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def dep(p: Annotated[Principal, Depends(get_principal)]) -> Principal:
        return _allowed(p, roles)

    return dep


class PilotCredential:
    """A pilot's own credential, verified when the route first asks who it is: inside the
    route's own worker thread, so that a pilot request takes one thread hop, its token's
    lookup joining the rest of its work."""

    def __init__(self, tokens: TokenStore, token: str) -> None:
        self._tokens, self._token = tokens, token
        self._principal: Principal | None = None

    def principal(self) -> Principal:
        """Who holds it (Unauthorized, Forbidden: not a pilot's own credential)."""
        if self._principal is None:
            self._principal = _allowed(self._tokens.verify(self._token), (Role.PILOT,))
        return self._principal


async def _pilot_credential(request: Request) -> PilotCredential:
    return PilotCredential(request.app.state.store.tokens, _bearer(request))


def sees(p: Principal, owner: str | None) -> bool:
    """Whether this caller may read work of `owner`: admins all, others their own."""
    return p.is_admin or owner == p.owner


async def _bootstrap(p: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not p.is_bootstrap:
        raise Forbidden(f"a {_kind(p)} token may not register a pilot (needs: a bootstrap "
                        "pilot token, which registering spends)")
    return p


# a numeric id in a path: within what the store holds, so a huge number is a 422, not a 500
Id = Annotated[int, Path(ge=0, le=2**63 - 1)]
StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
AnyPrincipal = Annotated[Principal, Depends(get_principal)]
UserAuth = Annotated[Principal, Depends(_require(Role.USER, Role.JOB, Role.ADMIN))]
# a pilot's own credential (from registering): only its own pilot routes; verified in the
# route's thread (PilotCredential.principal)
PilotAuth = Annotated[PilotCredential, Depends(_pilot_credential)]
# a one-time bootstrap token: only registration
BootstrapAuth = Annotated[Principal, Depends(_bootstrap)]
AdminAuth = Annotated[Principal, Depends(_require(Role.ADMIN))]
