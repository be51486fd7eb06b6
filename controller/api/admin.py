"""Users and tokens, for admin tokens (the `cloudpilot admin` command works on the database
directly, so the first admin token can be made before the service runs)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from controller.api.deps import AdminAuth, Id, SettingsDep, StoreDep
from controller.api.responses import TokenInfoOut, UserOut
from controller.api.schemas import TokenIn, TokenOut, UserIn
from controller.auth import Role
from controller.errors import InvalidInput

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


@router.post("/users", status_code=201, response_model=UserOut)
def create_user(body: UserIn, store: StoreDep, p: AdminAuth) -> UserOut:
    return UserOut.model_validate(store.tokens.create_user(body.name, body.group, body.share))


@router.get("/users", response_model=list[UserOut])
def users(store: StoreDep, p: AdminAuth) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in store.tokens.users()]


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


@router.get("/tokens", response_model=list[TokenInfoOut])
def tokens(store: StoreDep, p: AdminAuth) -> list[TokenInfoOut]:
    """Tokens (never their secret: only a hash is kept), job tokens left out."""
    return [TokenInfoOut.model_validate(t) for t in store.tokens.find()]


@router.delete("/tokens/{token_id}", status_code=204)
def revoke(token_id: Id, store: StoreDep, p: AdminAuth) -> Response:
    store.tokens.revoke(token_id)
    return Response(status_code=204)
