"""Machines and pilots. Machines leave the store as typed records (domain.machines.Machine);
every state change goes through the transition table and is kept as an event."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable
from typing import Any

from controller.domain.machines import (
    LIVE_STATES,
    REVOKE_STATES,
    STARTING_STATES,
    Machine,
    MachineState,
    check_transition,
)
from controller.errors import Conflict, NotFound
from controller.store.endpoints import bump_seq
from controller.store.sql import HELD, Connection, Transactions, in_list, one_row
from controller.store.tokens import TokenStore

M = MachineState


class MachineStore:
    def __init__(self, store: Transactions) -> None:
        self.store = store
        self._pilots: dict[str, dict[str, Any]] = {}  # registrations do not change

    # machines ----------------------------------------------------------------------------
    def _event(self, c: Connection, name: str, old: str | None, new: str, reason: str,
               now: float) -> None:
        c.execute("INSERT INTO machine_events (machine, at, from_state, to_state, reason)"
                  " VALUES (?, ?, ?, ?, ?)", (name, now, old, new, reason))

    def create(self, name: str, endpoint: str, seq: int, reason: str,
               now: float | None = None, info: dict[str, Any] | None = None) -> None:
        """Record a machine the scheduler asked for (state requested); `info` says what it is
        on a priced endpoint (pool, type, zone, market, price, cores, memory, slots)."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            c.execute(
                "INSERT INTO machines (name, endpoint, state, created_at, updated_at,"
                " last_busy_at, reason, managed, info) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
                (name, endpoint, M.REQUESTED.value, now, now, None, reason,
                 json.dumps(info) if info else None))
            bump_seq(c, endpoint, seq)
            self._event(c, name, None, M.REQUESTED.value, reason, now)

    def move(self, name: str, new: MachineState, reason: str | None = None,
             now: float | None = None, *, if_in: Collection[MachineState] | None = None) -> bool:
        """Move a machine to `new`. Returns False when it is there already, or when `if_in`
        is given and it is in none of those states (the caller's move no longer applies: say,
        its pilot registered first). A move the transition table refuses raises
        IllegalTransition: a caller that asks for one has a bug, which must not pass
        silently."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            row = one_row(c, f"no machine {name}",
                          "SELECT state FROM machines WHERE name = ?", name)
            old = M(row["state"])
            if old == new or (if_in is not None and old not in if_in):
                return False
            default = check_transition(old, new)
            c.execute("UPDATE machines SET state = ?, updated_at = ?, reason = ? WHERE name = ?",
                      (new.value, now, reason or default, name))
            self._event(c, name, old.value, new.value, reason or default, now)
            if new in REVOKE_STATES:  # its pilots' credentials die with it, at once
                TokenStore.revoke_machine_credentials(c, name)
            return True

    def update_info(self, name: str, **fields: Any) -> None:
        """Add to what the store keeps of a machine (e.g. a pilot job's batch job id)."""
        with self.store.tx() as c:
            row = one_row(c, f"no machine {name}", "SELECT info FROM machines WHERE name = ?", name)
            info = {**(json.loads(row["info"]) if row["info"] else {}), **fields}
            c.execute("UPDATE machines SET info = ? WHERE name = ?", (json.dumps(info), name))

    def note(self, name: str, reason: str, now: float | None = None) -> None:
        """Record something that happened to a machine without a state change (e.g. one
        Ansible task's result): an event whose from and to states are its current state."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            row = c.execute("SELECT state FROM machines WHERE name = ?", (name,)).fetchone()
            if row is not None:
                self._event(c, name, row["state"], row["state"], reason, now)

    def get(self, name: str) -> Machine:
        with self.store.read() as c:
            row = one_row(c, f"no machine {name}", "SELECT * FROM machines WHERE name = ?", name)
        return Machine.from_row(row)

    def find(self, endpoint: str | None = None, live: bool = False) -> list[Machine]:
        sql, args = "SELECT * FROM machines", []
        where = []
        if endpoint:
            where.append("endpoint = ?")
            args.append(endpoint)
        if live:
            where.append(f"state IN {in_list(LIVE_STATES)}")
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.store.read() as c:
            return [Machine.from_row(r)
                    for r in c.execute(sql + " ORDER BY created_at, name", args)]

    def record_observed(self, endpoint: str, seen: dict[str, tuple[str | None, str]]) -> int:
        """Keep what the driver reports of each machine (address, and a detail such as the
        cloud instance's id) where it changed."""
        if not seen:
            return 0
        marks = ",".join("?" * len(seen))
        with self.store.read() as c:
            rows = {r["name"]: (r["address"], r["observed"]) for r in c.execute(
                f"SELECT name, address, observed FROM machines WHERE endpoint = ? AND name IN"
                f" ({marks})", (endpoint, *seen))}
        changed = [(a, o, n) for n, (a, o) in seen.items() if n in rows and rows[n] != (a, o)]
        if changed:
            with self.store.tx() as c:
                c.executemany("UPDATE machines SET address = ?, observed = ? WHERE name = ?",
                              changed)
        return len(changed)

    def events(self, name: str) -> list[dict[str, Any]]:
        with self.store.read() as c:
            return [dict(r) for r in c.execute(
                "SELECT at, from_state, to_state, reason FROM machine_events WHERE machine = ?"
                " ORDER BY id", (name,))]

    # pilots ------------------------------------------------------------------------------
    def register_pilot(self, pilot_id: str, endpoint: str, machine: str, cores: int,
                       memory_mb: int, tags: list[str], slots: int, version: str,
                       now: float | None = None) -> None:
        """A pilot started on a machine: record it and mark its machine running."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            c.execute(
                "INSERT INTO pilots (id, endpoint, machine, cores, memory_mb, tags,"
                " slots, version, registered_at, last_seen) VALUES (?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (id) DO UPDATE SET endpoint = excluded.endpoint,"
                " machine = excluded.machine, cores = excluded.cores,"
                " memory_mb = excluded.memory_mb, tags = excluded.tags, slots = excluded.slots,"
                " version = excluded.version, registered_at = excluded.registered_at,"
                " last_seen = excluded.last_seen",
                (pilot_id, endpoint, machine, cores, memory_mb, json.dumps(tags), slots,
                 version, now, now))
            row = c.execute("SELECT state, endpoint FROM machines WHERE name = ?",
                            (machine,)).fetchone()
            if row is None:  # a pilot the controller did not start (by hand, or a joined host)
                c.execute(
                    "INSERT INTO machines (name, endpoint, state, created_at, updated_at,"
                    " last_busy_at, last_seen, reason, managed)"
                    " VALUES (?, ?, 'running', ?, ?, ?, ?, ?, 0)",
                    (machine, endpoint, now, now, now, now, "pilot registered"))
                self._event(c, machine, None, M.RUNNING.value,
                            "a pilot registered from a machine the controller did not start", now)
                return
            if row["endpoint"] != endpoint:
                raise Conflict(f"machine {machine} belongs to endpoint {row['endpoint']}")
            old = M(row["state"])
            if old in STARTING_STATES:
                if old == M.REQUESTED:
                    self._event(c, machine, old.value, M.BOOTING.value,
                                check_transition(old, M.BOOTING), now)
                c.execute("UPDATE machines SET state = 'running', updated_at = ?,"
                          " last_busy_at = ?, last_seen = ?, reason = ? WHERE name = ?",
                          (now, now, now, f"pilot {pilot_id} registered", machine))
                self._event(c, machine, M.BOOTING.value, M.RUNNING.value,
                            f"pilot {pilot_id} registered", now)
            elif old == M.RUNNING:  # a second pilot, or the same one after a restart
                c.execute("UPDATE machines SET last_seen = ? WHERE name = ?", (now, machine))
            else:
                raise Conflict(f"machine {machine} is {old.value}; its pilot must stop")

    def pilot_left(self, pilot_id: str, machine: str, why: str,
                   now: float | None = None) -> None:
        """A pilot said goodbye. With no other pilot left on it, its machine has stopped."""
        now = time.time() if now is None else now
        self.forget_pilot(pilot_id)
        self.store.changed(f"pilot:{pilot_id}")
        with self.store.tx() as c:
            c.execute("DELETE FROM pilots WHERE id = ?", (pilot_id,))
            others = c.execute("SELECT COUNT(*) FROM pilots WHERE machine = ?",
                               (machine,)).fetchone()[0]
            row = c.execute("SELECT state FROM machines WHERE name = ?", (machine,)).fetchone()
            if others or row is None or M(row["state"]) not in (M.RUNNING, M.STOPPING):
                return
            held = c.execute("SELECT COUNT(*) FROM jobs WHERE machine = ?"
                             f" AND state IN {HELD}", (machine,)).fetchone()[0]
            if held:  # never stopped while it holds jobs: they end first (or it is lost)
                return
            c.execute("UPDATE machines SET state = 'stopped', updated_at = ?, reason = ?"
                      " WHERE name = ?", (now, f"its pilot exited: {why}", machine))
            self._event(c, machine, row["state"], M.STOPPED.value, f"its pilot exited: {why}",
                        now)

    def forget_pilot(self, pilot_id: str | None) -> None:
        """Drop a cached registration (None: all), when another process says it changed."""
        if pilot_id is None:
            self._pilots.clear()
        else:
            self._pilots.pop(pilot_id, None)

    def pilot(self, pilot_id: str) -> dict[str, Any]:
        cached = self._pilots.get(pilot_id)
        if cached is not None:
            return cached
        with self.store.read() as c:
            row = c.execute("SELECT * FROM pilots WHERE id = ?", (pilot_id,)).fetchone()
            m = c.execute("SELECT * FROM machines WHERE name = ?",
                          (row["machine"] if row else "",)).fetchone()
        if row is None:
            raise NotFound(f"no pilot {pilot_id}; register first")
        spot = m is not None and Machine.from_row(m).spot
        market = Machine.from_row(m).info.get("market") if m is not None else None
        self._pilots[pilot_id] = pilot = dict(row, tags=json.loads(row["tags"]), spot=spot,
                                              on_demand=market == "on-demand")
        return pilot

    # consolidation: machines that take no new jobs (the scheduler's drain set) ---------------
    def set_draining(self, endpoint: str, names: Iterable[str]) -> None:
        """Mark exactly these machines of the endpoint as draining."""
        names = sorted(set(names))
        marks = ",".join("?" * len(names))
        with self.store.tx() as c:
            c.execute("UPDATE machines SET draining = 0 WHERE endpoint = ? AND draining = 1"
                      + (f" AND name NOT IN ({marks})" if names else ""), [endpoint, *names])
            if names:
                c.execute(f"UPDATE machines SET draining = 1 WHERE endpoint = ? AND name IN"
                          f" ({marks}) AND draining = 0", [endpoint, *names])

    def is_draining(self, machine: str) -> bool:
        with self.store.read() as c:
            return self.draining(c, machine)

    @staticmethod
    def draining(c: Connection, machine: str) -> bool:
        row = c.execute("SELECT draining FROM machines WHERE name = ?", (machine,)).fetchone()
        return bool(row and row[0])

    def live_pilots(self) -> list[dict[str, Any]]:
        """Pilots on live machines, with what each offers in all (for waiting reasons)."""
        with self.store.read() as c:
            rows = c.execute(
                "SELECT p.*, m.info FROM pilots p JOIN machines m ON m.name = p.machine"
                f" WHERE m.state IN ({','.join('?' * len(LIVE_STATES))})"
                " ORDER BY p.machine, p.id", [s.value for s in LIVE_STATES]).fetchall()
        markets = [json.loads(r["info"] or "{}").get("market") for r in rows]
        return [dict(r, tags=json.loads(r["tags"]), spot=market == "spot",
                     on_demand=market == "on-demand") for r, market in zip(rows, markets,
                                                                            strict=True)]

    def pilot_seen(self, pilot_id: str, machine: str, now: float | None = None) -> str:
        """Record that a pilot is alive; return its machine's state."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            c.execute("UPDATE pilots SET last_seen = ? WHERE id = ?", (now, pilot_id))
            row = c.execute("UPDATE machines SET last_seen = ? WHERE name = ? RETURNING state",
                            (now, machine)).fetchone()
        return row["state"] if row else "unknown"
