"""Fencing (issue 26) on a real PostgreSQL: a deposed leader's late apply result is refused.
Two reconcilers, each with its own store and leadership, stand for two controller processes."""

import threading

import psycopg

from controller.config.settings import Settings, endpoint_config
from controller.domain.machines import MachineState as M
from controller.domain.plans import PlanState as P
from controller.reconcile.loop import Reconciler
from controller.store import Store
from controller.store.leader import LOOP_LOCK, PostgresLeadership
from controller.testing import Clock, InMemoryDriver
from tests.conftest import wait_until
from tests.unit.test_reconcile import submit, tick


def test_a_deposed_leaders_late_apply_result_is_refused_and_logged(postgres_server, caplog):
    """Issue 26, fencing: two controller processes on one PostgreSQL database. The leader
    (epoch 1) applies a plan; its driver call hangs; it loses the loop's lock (its session
    ends, as when it is frozen or cut off); the other takes over (epoch 2), applies the plan
    again under its own epoch (the driver is idempotent per machine name: one machine) and
    records it. When the old leader's call returns, its result is refused and logged: the
    plan is applied once, its machine created once."""
    url = postgres_server.create_database()
    ep = endpoint_config(name="ep", slots=1, max_machines=2, max_starts_per_cycle=2,
                        auto_apply=True)
    settings = Settings(database=url, endpoints=[ep])
    stores = [Store(url), Store(url)]  # each process's own
    stores[0].endpoints.sync([e.model_dump() for e in settings.endpoints])
    stores[0].tokens.create_user("alice", "g")
    leads = [PostgresLeadership(url), PostgresLeadership(url)]
    cloud = [InMemoryDriver("ep"), InMemoryDriver("ep")]
    cloud[1].machines = cloud[0].machines  # one cloud, seen by both processes
    cloud[0].hold = threading.Event()  # the old leader's driver call hangs
    clock = Clock()
    try:
        assert leads[0].held() and leads[0].epoch == 1 and not leads[1].held()
        old = Reconciler(settings, stores[0], {"ep": cloud[0]}, clock=clock)
        old.lead(leads[0].epoch)
        submit(stores[0], 1)
        old.tick()
        wait_until(lambda: cloud[0].applied, 5, 0.01, "the old leader's apply to start")
        (plan,) = stores[0].plans.find("ep")
        assert plan.state == P.APPLYING
        with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE"
                          " locktype = 'advisory' AND objid = %s", (LOOP_LOCK & 0xFFFFFFFF,))
        wait_until(leads[1].held, 10, what="the other process to take the lead")
        assert leads[1].epoch == 2 and not leads[0].held()
        new = Reconciler(settings, stores[1], {"ep": cloud[1]}, clock=clock)
        new.lead(leads[1].epoch)  # the plan left applying goes back to approved
        tick(new)
        assert stores[1].plans.get(plan.id).state == P.APPLIED
        assert stores[1].rows("SELECT epoch FROM plans WHERE id = ?", (plan.id,))[0][0] == 2
        cloud[0].hold.set()  # the old leader's call returns at last
        assert old.wait_idle(10)
        assert ("the apply's result is not recorded: "
                f"plan {plan.id}: a deposed leader (epoch 1) refused") in caplog.text
        events = stores[1].plans.events(plan.id)
        assert [e["to_state"] for e in events].count("applied") == 1
        assert cloud[0].machines == {"ep-0001"} and len(cloud[1].applied) == 1
        assert stores[1].machines.get("ep-0001").state == M.BOOTING
    finally:
        cloud[0].hold.set()
        for x in (*leads, *stores):
            x.close()


def _two_processes(postgres_server, auto_apply: bool):
    """Two controller processes' stores, leaderships and views of one in-memory cloud."""
    url = postgres_server.create_database()
    ep = endpoint_config(name="ep", slots=1, max_machines=2, max_starts_per_cycle=2,
                        auto_apply=auto_apply)
    settings = Settings(database=url, endpoints=[ep])
    stores = [Store(url), Store(url)]
    stores[0].endpoints.sync([e.model_dump() for e in settings.endpoints])
    stores[0].tokens.create_user("alice", "g")
    leads = [PostgresLeadership(url), PostgresLeadership(url)]
    cloud = [InMemoryDriver("ep"), InMemoryDriver("ep")]
    cloud[1].machines = cloud[0].machines
    return settings, stores, leads, cloud


def _depose(postgres_server, leads) -> None:
    """The first process's lock session ends (as when frozen past its lease); the second
    takes the lead under epoch 2."""
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE"
                      " locktype = 'advisory' AND objid = %s", (LOOP_LOCK & 0xFFFFFFFF,))
    wait_until(leads[1].held, 10, what="the other process to take the lead")
    assert leads[1].epoch == 2 and not leads[0].leads_now()


def test_a_deposed_leader_does_not_call_the_driver(postgres_server, caplog):
    """Issue 26, the driver call's preconditions: a leader's tick is under way when it is
    deposed. Starting the apply, the transaction that marks the plan applying checks the
    epoch (the new leader's is higher): the driver is never called, the plan stays approved,
    and the new leader, having read the driver's truth again, applies it once."""
    settings, stores, leads, cloud = _two_processes(postgres_server, auto_apply=False)
    clock = Clock()
    try:
        assert leads[0].held() and leads[0].epoch == 1
        old = Reconciler(settings, stores[0], {"ep": cloud[0]}, clock=clock)
        old.lead(leads[0].epoch, leads[0].leads_now)
        submit(stores[0], 1)
        tick(old)  # a pending plan: approval wanted
        (plan,) = stores[0].plans.find("ep")
        stores[0].plans.approve(plan.id, "an operator")
        _depose(postgres_server, leads)
        tick(old)  # its tick was under way: it decides to apply the approved plan
        assert (f"the driver is not called: plan {plan.id}: a deposed leader (epoch 1) "
                "refused") in caplog.text
        assert cloud[0].applied == [] and cloud[0].machines == set()
        assert stores[1].plans.get(plan.id).state == P.APPROVED
        new = Reconciler(settings, stores[1], {"ep": cloud[1]}, clock=clock)
        new.lead(leads[1].epoch, leads[1].leads_now)
        tick(new)
        assert stores[1].plans.get(plan.id).state == P.APPLIED
        assert len(cloud[1].applied) == 1 and cloud[0].machines == {"ep-0001"}
    finally:
        for x in (*leads, *stores):
            x.close()


def test_a_leader_deposed_inside_the_driver_call_changes_nothing_more(postgres_server,
                                                                      caplog):
    """Issue 26: the leader is deposed while its driver call hangs; when the call goes on,
    the driver checks the fence before changing a machine (the lock's session is gone):
    Fenced ends the call, logged, and the new leader's apply is the only one."""
    settings, stores, leads, cloud = _two_processes(postgres_server, auto_apply=True)
    cloud[0].machines = set()  # two views: what each process's driver changed
    cloud[0].hold = threading.Event()
    clock = Clock()
    try:
        assert leads[0].held()
        old = Reconciler(settings, stores[0], {"ep": cloud[0]}, clock=clock)
        old.lead(leads[0].epoch, leads[0].leads_now)
        submit(stores[0], 1)
        old.tick()
        wait_until(lambda: cloud[0].applied, 5, 0.01, "the old leader's apply to start")
        (plan,) = stores[0].plans.find("ep")
        _depose(postgres_server, leads)
        new = Reconciler(settings, stores[1], {"ep": cloud[1]}, clock=clock)
        new.lead(leads[1].epoch, leads[1].leads_now)
        tick(new)
        assert stores[1].plans.get(plan.id).state == P.APPLIED
        cloud[0].hold.set()
        assert old.wait_idle(10)
        assert (f"the driver's call stopped: plan {plan.id}: this process (epoch 1) no "
                "longer leads the reconcile loop") in caplog.text
        assert cloud[0].machines == set() and cloud[1].machines == {"ep-0001"}
        events = stores[1].plans.events(plan.id)
        assert [e["to_state"] for e in events].count("applied") == 1
    finally:
        cloud[0].hold.set()
        for x in (*leads, *stores):
            x.close()
