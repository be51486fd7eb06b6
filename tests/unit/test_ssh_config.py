"""SSH endpoint configuration, the pilot bundle and host key fingerprints (no SSH here)."""

from pathlib import Path

import pytest

from controller.config.settings import Settings
from controller.errors import ConfigError


def test_ssh_config_is_validated(tmp_path: Path):
    (tmp_path / "c.toml").write_text(
        '[[endpoints]]\nname = "lab"\ndriver = "ssh"\n')
    with pytest.raises(ConfigError, match=r"needs an \[endpoints.ssh\] section"):
        Settings.load(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text(
        '[[endpoints]]\nname = "lab"\ndriver = "ssh"\n'
        '[endpoints.ssh]\nuser = "ops"\nkey = "keys/id"\nknown_hosts = "kh"\n'
        'hosts = [{ name = "a", address = "192.0.2.1" }, { name = "a", address = "x" }]\n')
    with pytest.raises(ConfigError, match="host names must be unique"):
        Settings.load(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text(
        '[[endpoints]]\nname = "lab"\ndriver = "ssh"\n'
        '[endpoints.ssh]\nuser = "ops"\nkey = "keys/id"\nknown_hosts = "kh"\n'
        'hosts = [{ name = "a", address = "192.0.2.1", slots = 4 }]\n')
    ssh = Settings.load(tmp_path / "c.toml").endpoints[0].ssh
    assert ssh is not None and ssh.key == tmp_path / "keys" / "id"
    assert ssh.hosts[0].slots == 4 and ssh.hosts[0].port == 22


def test_the_example_ssh_config_loads():
    root = Path(__file__).resolve().parents[2]
    ep = Settings.load(root / "examples" / "ssh.toml").endpoints[0]
    assert ep.driver == "ssh" and ep.ssh is not None
    assert ep.ssh.key == root / "examples" / "keys" / "id_ed25519"
    assert [h.slots for h in ep.ssh.hosts] == [None, 4, None]


def test_no_ansible_playbook_is_a_setup_error_not_a_host_failure(tmp_path: Path, monkeypatch):
    """rc 127 from ansible-runner (ansible-playbook not on PATH) is named as what it is."""
    from controller.drivers import ansible

    monkeypatch.setattr(ansible, "ansible_bin_dir", lambda: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    inventory = {"all": {"hosts": {"m1": {"ansible_connection": "local"}}}}
    out = ansible.run_playbook("facts.yml", inventory, ident="t", work_root=tmp_path / "runs")
    assert out.status == "setup-error" and out.rc == 127
    assert "ansible-playbook not found" in out.error
    host = out.host("m1")
    assert host.failed and "ansible-playbook not found" in host.error
    assert list((tmp_path / "runs").iterdir()) == []  # the private data dir is gone


def test_membership_join_and_leave_at_the_store(tmp_path: Path):
    """What a cloud endpoint in `ssh` contextualization mode calls: no SSH, just the wish."""
    from controller.errors import Conflict, InvalidInput, NotFound
    from controller.services import membership
    from controller.store import Store

    store = Store(tmp_path / "db")
    store.endpoints.sync([{"name": "lab", "driver": "ssh"},
                                   {"name": "local", "driver": "local"}])
    h = membership.join(store, "lab", "vm-1", "198.51.100.7", source="cloud:aws", now=1.0)
    assert (h.membership, h.machine, h.source) == ("joining", "lab-vm-1", "cloud:aws")
    assert membership.join(store, "lab", "vm-1", "198.51.100.7").joined_at == 1.0  # no-op
    with pytest.raises(Conflict):
        membership.join(store, "lab", "vm-1", "198.51.100.8")
    with pytest.raises(NotFound):
        membership.join(store, "local", "vm-2", "198.51.100.9")
    with pytest.raises(InvalidInput):
        membership.join(store, "lab", "vm 2", "198.51.100.9")
    assert not membership.is_member(store, "lab", "vm-1")
    store.hosts.answered("lab", "vm-1", {"cores": 2, "memory_mb": 1024, "python": "3.11.2"})
    assert membership.is_member(store, "lab", "vm-1")
    assert store.machines.get("lab-vm-1").state == "stopped"
    assert membership.leave(store, "lab", "vm-1", source="cloud:aws").membership == "left"
    with pytest.raises(NotFound):
        membership.leave(store, "lab", "vm-1")
    events = [e["event"] for e in store.hosts.events("lab", "vm-1")]
    assert events == ["joining", "facts", "joined", "left"]
    store.close()
