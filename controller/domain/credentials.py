"""Pilot credentials with a life (issue 26): how long one lives and when a heartbeat renews
it. Pure: plain numbers in, time injected."""

from __future__ import annotations

DEFAULT_MAX_MACHINE_AGE = 86400.0  # s: an endpoint's max_machine_age unless it sets one
RENEW_AFTER = 0.25  # share of a credential's lifetime after which a heartbeat renews it


def pilot_credential_lifetime(max_machine_age: float) -> float:
    """A pilot's own credential lives twice its endpoint's max_machine_age from its last
    renewal: a pilot that heartbeats never sees it expire, a machine gone silent loses it."""
    return 2.0 * max_machine_age


def renewal_due(expires_at: float | None, lifetime: float, now: float) -> bool:
    """Renew once RENEW_AFTER of the lifetime has passed since the last renewal (or the
    issue), so that a heartbeat writes nothing more than it did, but once in so many."""
    return expires_at is not None and expires_at - now < lifetime * (1.0 - RENEW_AFTER)
