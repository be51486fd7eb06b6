"""Hosts of SSH endpoints: membership (config, joined, left), facts, failures and back-off,
and their events. Each member host has a machine (named <endpoint>-<host>) whose lifecycle is
its pilot's."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from controller.domain.hostpool import Host, Membership, host_machine
from controller.domain.machines import MachineState
from controller.errors import Conflict, NotFound
from controller.store.sql import Connection, Row, Transactions

M = MachineState


class HostStore:
    def __init__(self, store: Transactions) -> None:
        self.store = store

    def _event(self, c: Connection, endpoint: str, host: str, event: str, detail: str,
               now: float) -> None:
        c.execute("INSERT INTO ssh_host_events (endpoint, host, at, event, detail)"
                  " VALUES (?, ?, ?, ?, ?)", (endpoint, host, now, event, detail))

    def _row(self, c: Connection, endpoint: str, host: str) -> Row | None:
        return c.execute("SELECT * FROM ssh_hosts WHERE endpoint = ? AND name = ?",
                         (endpoint, host)).fetchone()

    # membership --------------------------------------------------------------------------
    def join(self, endpoint: str, host: str, address: str, port: int = 22, *,
             slots: int | None = None, cores: int | None = None, memory_mb: int | None = None,
             source: str = "api", host_key: str | None = None,
             now: float | None = None) -> Host:
        """Add a host (joining until it answers on SSH). Joining again with the same address
        is a no-op; a host that left joins anew."""
        now = time.time() if now is None else now
        machine = host_machine(endpoint, host)
        with self.store.tx() as c:
            other = c.execute("SELECT endpoint FROM machines WHERE name = ?",
                              (machine,)).fetchone()
            if other is not None and other["endpoint"] != endpoint:
                raise Conflict(f"machine name {machine} is taken by endpoint {other['endpoint']}")
            row = self._row(c, endpoint, host)
            fields = (address, port, slots, cores, memory_mb, source, host_key)
            if row is not None and row["membership"] != Membership.LEFT:
                if (row["address"], row["port"]) != (address, port):
                    raise Conflict(f"host {host} of {endpoint} is already at {row['address']}:"
                                   f"{row['port']}; make it leave first")
                c.execute("UPDATE ssh_hosts SET slots = ?, cores = ?, memory_mb = ?,"
                          " host_key = COALESCE(?, host_key) WHERE endpoint = ? AND name = ?",
                          (slots, cores, memory_mb, host_key, endpoint, host))
                return self._public(self._row(c, endpoint, host))
            if row is None:
                c.execute(
                    "INSERT INTO ssh_hosts (endpoint, name, machine, address, port, slots, cores,"
                    " memory_mb, source, host_key, membership, joined_at, updated_at, failures)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                    (endpoint, host, machine, *fields, Membership.JOINING.value, now, now))
            else:
                c.execute(
                    "UPDATE ssh_hosts SET address = ?, port = ?, slots = ?, cores = ?,"
                    " memory_mb = ?, source = ?, host_key = ?, membership = ?, joined_at = ?,"
                    " updated_at = ?,"
                    " failures = 0, last_failure_at = NULL, last_error = NULL"
                    " WHERE endpoint = ? AND name = ?",
                    (*fields, Membership.JOINING.value, now, now, endpoint, host))
            self._event(c, endpoint, host, "joining",
                        f"{address}:{port} added by {source}; it joins once it answers on SSH",
                        now)
            return self._public(self._row(c, endpoint, host))

    def leave(self, endpoint: str, host: str, *, source: str = "api",
              now: float | None = None) -> Host:
        """Remove a host: its pilot is stopped by the loop (running jobs are interrupted and
        rescheduled)."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            row = self._row(c, endpoint, host)
            if row is None or row["membership"] == Membership.LEFT:
                raise NotFound(f"no host {host} in endpoint {endpoint}")
            c.execute("UPDATE ssh_hosts SET membership = ?, updated_at = ?"
                      " WHERE endpoint = ? AND name = ?",
                      (Membership.LEFT.value, now, endpoint, host))
            self._event(c, endpoint, host, "left", f"removed by {source}", now)
            return self._public(self._row(c, endpoint, host))

    def sync_config(self, endpoint: str, hosts: Iterable[dict[str, Any]],
                    now: float | None = None) -> None:
        """Make the config's hosts members-to-be, and let hosts dropped from the config leave
        (hosts that joined through the API stay)."""
        now = time.time() if now is None else now
        listed = {h["name"]: h for h in hosts}
        for h in listed.values():
            current = self.get(endpoint, h["name"], missing_ok=True)
            if current is not None and current.membership != Membership.LEFT and \
                    (current.address, current.port) != (h["address"], h["port"]):
                self.leave(endpoint, h["name"], source="config (address changed)", now=now)
            self.join(endpoint, h["name"], h["address"], h["port"], slots=h.get("slots"),
                      cores=h.get("cores"), memory_mb=h.get("memory_mb"), source="config",
                      now=now)
        for known in self.find(endpoint):
            if known.source == "config" and known.name not in listed \
                    and known.membership != Membership.LEFT:
                self.leave(endpoint, known.name, source="config (no longer listed)", now=now)

    # what the loop learns ----------------------------------------------------------------
    def answered(self, endpoint: str, host: str, facts: dict[str, Any],
                 now: float | None = None) -> bool:
        """The host answered on SSH with its facts. A joining host becomes a member and gets
        its machine (stopped: no pilot yet). Returns True when it just joined."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            row = self._row(c, endpoint, host)
            if row is None:
                return False
            c.execute("UPDATE ssh_hosts SET facts = ?, updated_at = ? WHERE endpoint = ?"
                      " AND name = ?", (json.dumps(facts), now, endpoint, host))
            summary = (f"{facts.get('cores')} cores, {facts.get('memory_mb')} MB, Python "
                       f"{facts.get('python')}, {facts.get('disk_free_mb')} MB free disk")
            before = json.loads(row["facts"]) if row["facts"] else {}
            if any(before.get(k) != facts.get(k) for k in ("cores", "memory_mb", "python")):
                self._event(c, endpoint, host, "facts", summary, now)  # new, or changed
            machine = row["machine"]
            info = json.dumps({"facts": facts, "address": row["address"], "port": row["port"]})
            c.execute("UPDATE machines SET info = ?, address = ? WHERE name = ?",
                      (info, row["address"], machine))
            if row["membership"] != Membership.JOINING:
                return False
            c.execute("UPDATE ssh_hosts SET membership = ?, failures = 0, last_failure_at = NULL,"
                      " last_error = NULL WHERE endpoint = ? AND name = ?",
                      (Membership.MEMBER.value, endpoint, host))
            self._event(c, endpoint, host, "joined", "answers on SSH: " + summary, now)
            if c.execute("SELECT 1 FROM machines WHERE name = ?", (machine,)).fetchone() is None:
                c.execute(
                    "INSERT INTO machines (name, endpoint, state, created_at, updated_at,"
                    " address, reason, info, managed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
                    (machine, endpoint, M.STOPPED.value, now, now, row["address"],
                     "joined: no pilot yet", info))
                c.execute("INSERT INTO machine_events (machine, at, from_state, to_state, reason)"
                          " VALUES (?, ?, NULL, ?, ?)",
                          (machine, now, M.STOPPED.value, f"host {host} joined ({summary})"))
            return True

    def failed(self, endpoint: str, host: str, error: str, now: float | None = None) -> int:
        """An SSH run on the host failed: count it (for the back-off) and say why."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            c.execute("UPDATE ssh_hosts SET failures = COALESCE(failures, 0) + 1,"
                      " last_failure_at = ?, last_error = ?, updated_at = ?"
                      " WHERE endpoint = ? AND name = ?", (now, error, now, endpoint, host))
            self._event(c, endpoint, host, "unreachable" if "unreachable" in error.lower()
                        else "failed", error, now)
            row = self._row(c, endpoint, host)
            return int(row["failures"]) if row else 0

    def recovered(self, endpoint: str, host: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.store.tx() as c:
            c.execute("UPDATE ssh_hosts SET failures = 0, last_failure_at = NULL,"
                      " last_error = NULL, updated_at = ? WHERE endpoint = ? AND name = ?"
                      " AND failures > 0", (now, endpoint, host))

    def note(self, endpoint: str, host: str, event: str, detail: str,
             now: float | None = None) -> None:
        with self.store.tx() as c:
            self._event(c, endpoint, host, event, detail, time.time() if now is None else now)

    # reading -----------------------------------------------------------------------------
    @staticmethod
    def _public(row: Any) -> Host:
        assert row is not None
        return Host.from_row(row)

    def get(self, endpoint: str, host: str, missing_ok: bool = False) -> Host | None:
        with self.store.read() as c:
            row = self._row(c, endpoint, host)
        if row is None:
            if missing_ok:
                return None
            raise NotFound(f"no host {host} in endpoint {endpoint}")
        return self._public(row)

    def find(self, endpoint: str, include_left: bool = True) -> list[Host]:
        sql = "SELECT * FROM ssh_hosts WHERE endpoint = ?"
        if not include_left:
            sql += f" AND membership != '{Membership.LEFT.value}'"
        with self.store.read() as c:
            return [self._public(r) for r in c.execute(sql + " ORDER BY name", (endpoint,))]

    def events(self, endpoint: str, host: str | None = None,
               limit: int = 200) -> list[dict[str, Any]]:
        sql, args = "SELECT host, at, event, detail FROM ssh_host_events WHERE endpoint = ?", [
            endpoint]
        if host is not None:
            sql += " AND host = ?"
            args.append(host)
        with self.store.read() as c:
            rows = c.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [dict(r) for r in reversed(rows)]
