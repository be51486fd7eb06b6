"""A cloud endpoint in ssh contextualization mode: its VMs join the paired SSH endpoint as
hosts and leave it when deleted (the loop with an in-memory cloud, a real SQLite store)."""

import pytest

from controller.domain.jobs import NewJob
from controller.domain.machines import MachineState as M
from controller.reconcile.loop import Reconciler
from controller.store import Store
from controller.testing import Clock, InMemoryDriver
from tests.unit.test_cloud_settings import AWS, load
from tests.unit.test_reconcile import tick

CONFIG = ('[[endpoints]]\nname = "lab"\ndriver = "ssh"\n'
          '[endpoints.ssh]\nuser = "ops"\nkey = "id_ed25519"\n'
          '[[endpoints]]\nname = "vms"\ndriver = "aws"\ncontextualization = "ssh"\n'
          'ssh_endpoint = "lab"\nauto_apply = true\nmax_machines = 2\nslots = 2\n'
          'idle_timeout = 60\n' + AWS + 'public_key = "ssh-ed25519 AAAA k"\n'
          'ssh_cidr = "10.0.0.5/32"\n')


@pytest.fixture
def world(tmp_path, database):
    settings = load(tmp_path, CONFIG)
    store = Store(database)
    store.endpoints.sync([e.model_dump(mode="json") for e in settings.endpoints])
    store.tokens.create_user("alice", "g")
    cloud, clock = InMemoryDriver("vms"), Clock()
    loop = Reconciler(settings, store, {"vms": cloud}, clock=clock)
    yield store, cloud, loop, clock
    store.close()


def test_vms_join_the_ssh_endpoint_run_through_it_and_leave(world):
    store, cloud, loop, clock = world
    store.jobs.submit([NewJob("/bin/true")] * 2, "alice", "g", 3)
    tick(loop)
    assert cloud.machines == {"vms-0001"}  # 2 jobs, 2 slots per VM
    tick(loop)  # the cloud reports it up at 10.0.0.1: it joins lab as a host
    (host,) = store.hosts.find("lab")
    assert (host.name, host.address, host.source, host.membership) == (
        "vms-0001", "10.0.0.1", "cloud:vms", "joining")
    assert store.machines.get("vms-0001").state == M.BOOTING
    # the SSH endpoint reached it and started a pilot there (as its Ansible run would)
    store.machines.register_pilot("p1", "lab", "lab-vms-0001", 2, 2048, [], 2, "test")
    clock.t += 5
    tick(loop)
    vm = store.machines.get("vms-0001")
    assert vm.state == M.RUNNING and "joined lab as host vms-0001" in vm.reason
    clock.t += 600  # silent, as far as the VM itself goes: not lost, the SSH side watches
    tick(loop)
    assert store.machines.get("vms-0001").state != M.LOST
    cloud.machines.clear()  # deleted in the cloud
    tick(loop)
    assert store.hosts.get("lab", "vms-0001").membership == "left"
    events = [e["event"] for e in store.hosts.events("lab", "vms-0001")]
    assert "joining" in events and "left" in events


def test_a_busy_host_keeps_its_vm(world):
    store, cloud, loop, clock = world
    store.jobs.submit([NewJob("/bin/true")], "alice", "g", 3)
    tick(loop)
    tick(loop)
    store.machines.register_pilot("p1", "lab", "lab-vms-0001", 2, 2048, [], 2, "test")

    from controller.domain.matching import SlotOffer

    got = store.jobs.match("p1", "lab-vms-0001", SlotOffer("lab", 2, 2048), by="owner",
                           shares={}).jobs
    assert len(got) == 1
    clock.t += 3600  # far past the idle timeout, but its host runs a job
    tick(loop)
    assert store.machines.get("vms-0001").state == M.RUNNING
    assert cloud.machines == {"vms-0001"}
