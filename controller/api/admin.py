"""Users and tokens, for admin tokens (the `cloudpilot admin` command works on the database
directly, so the first admin token can be made before the service runs)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from controller.api.deps import AdminAuth, Id, SettingsDep, StoreDep
from controller.api.schemas import TokenIn, TokenOut, UserIn
from controller.auth import Role
from controller.errors import InvalidInput

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


@router.post("/users", status_code=201)
def create_user(body: UserIn, store: StoreDep, p: AdminAuth) -> dict[str, Any]:
    return store.tokens.create_user(body.name, body.group, body.share)


@router.get("/users")
def users(store: StoreDep, p: AdminAuth) -> list[dict[str, Any]]:
    return store.tokens.users()


@router.post("/tokens", status_code=201, response_model=TokenOut)
def create_token(body: TokenIn, store: StoreDep, settings: SettingsDep,
                 p: AdminAuth) -> TokenOut:
    """Create a token; it is shown once and only its hash is kept."""
    role = Role(body.role)
    if role == Role.PILOT and settings.endpoint(body.endpoint or "") is None:
        raise InvalidInput(f"no endpoint {body.endpoint!r} is configured")
    if role == Role.USER and not body.owner:
        raise InvalidInput("a user token needs an owner")
    return TokenOut(token=store.tokens.issue(role, owner=body.owner, endpoint=body.endpoint,
                                             lifetime=body.lifetime, note=body.note))


@router.get("/tokens")
def tokens(store: StoreDep, p: AdminAuth) -> list[dict[str, Any]]:
    return store.tokens.find()


@router.delete("/tokens/{token_id}", status_code=204)
def revoke(token_id: Id, store: StoreDep, p: AdminAuth) -> Response:
    store.tokens.revoke(token_id)
    return Response(status_code=204)
