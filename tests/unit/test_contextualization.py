"""cloud-init user-data: every rendered template passes `cloud-init schema` and our own check of
top-level keys; the pilot mode writes exactly the settings the local driver runs with."""

import bz2
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from controller.config.settings import endpoint_config
from controller.drivers import contextualization as ctx
from controller.drivers.local import LocalDriver

SCHEMA = Path("/usr/lib/python3/dist-packages/cloudinit/config/schemas/"
              "schema-cloud-config-v1.json")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhGk2c3cl2hSAFA0xD8i8T1QqBJ8GiqNcXd cloudpilot@ctl"
TOKEN = "cp_secret-pilot-token-for-tests"

AWS = {"region": "eu-west-1", "ami": "ami-0abc", "ssh_cidr": "10.0.0.5/32",
       "public_key": KEY}
ENDPOINTS = {
    "local": endpoint_config(name="local", slots=3, tags=["linux", "fast"]),
    "aws-pilot": endpoint_config(name="aws-pilot", driver="aws", aws=AWS),
    "aws-ssh": endpoint_config(name="aws-ssh", driver="aws", aws=AWS, contextualization="ssh",
                              ssh_endpoint="hosts"),
}


def rendered(name):
    return ctx.user_data(ENDPOINTS[name], "http://10.0.0.5:8080", TOKEN, f"{name}-0001")


def schema_keys():
    """The top-level keys of cloud-init's own schema (where it is installed)."""
    s = json.loads(SCHEMA.read_text())
    keys = set()
    for ref in s["allOf"]:
        keys |= set(s["$defs"][ref["$ref"].rsplit("/", 1)[1]].get("properties", {}))
    return frozenset(keys)


def test_our_key_list_is_cloud_inits():
    if not SCHEMA.exists():
        pytest.skip("cloud-init is not installed")
    assert schema_keys() == ctx.CLOUD_CONFIG_KEYS


def test_unknown_keys_and_bad_documents_are_refused():
    with pytest.raises(ctx.ContextualizationError, match=r"\['write_file'\]"):
        ctx.check_cloud_config("#cloud-config\nwrite_file: []\n")
    with pytest.raises(ctx.ContextualizationError, match="#cloud-config"):
        ctx.check_cloud_config("packages: []\n")
    with pytest.raises(ctx.ContextualizationError, match="not a mapping"):
        ctx.check_cloud_config("#cloud-config\n- a\n")
    with pytest.raises(ctx.ContextualizationError, match="OpenSSH public key"):
        ctx.render_ssh("cloudpilot", "not a key")


def test_pilot_mode_writes_the_pilot_config_installs_and_starts_it():
    text = rendered("aws-pilot")
    doc = yaml.safe_load(text)
    cfg = ctx.pilot_settings_from(text)
    assert cfg == {"controller_url": "http://10.0.0.5:8080", "token": TOKEN,
                   "endpoint": "aws-pilot", "machine": "aws-pilot-0001", "slots": 2,
                   "cores": 2, "memory_mb": 2048, "tags": ["linux"], "idle_timeout": 65.0,
                   "orphan_timeout": 600.0,
                   "heartbeat_interval": 10.0, "workdir": "/var/lib/cloudpilot/work",
                   "metadata_url": "http://169.254.169.254", "isolation": "bwrap",
                   "hide": ["/var/lib/cloudpilot", "/opt/cloudpilot"]}
    files = {f["path"]: f for f in doc["write_files"]}
    assert files[ctx.PILOT_CONFIG_PATH]["permissions"] == "0600"
    unit = files["/etc/systemd/system/cloudpilot-pilot.service"]["content"]
    assert "ExecStart=/usr/bin/python3 -m pilot --config /etc/cloudpilot/pilot.json" in unit
    assert "User=cloudpilot" in unit and "WantedBy=multi-user.target" in unit
    assert "poweroff" in files["/opt/cloudpilot/after-pilot.sh"]["content"]
    assert ["systemctl", "enable", "--now", "cloudpilot-pilot.service"] in doc["runcmd"]
    # the pilot's only dependency, and the sandbox its payloads run in
    assert doc["packages"] == ["python3", "bubblewrap"]
    # the pilot's code is fetched from the controller, pinned by the SHA-256 of the
    # repository's pilot package as shipped
    fetch = ctx.written_file(text, "/opt/cloudpilot/fetch-pilot.py").decode()
    assert 'URL = "http://10.0.0.5:8080/api/v1/pilot/code"' in fetch
    assert f'SHA256 = "{hashlib.sha256(ctx.pilot_tarball()).hexdigest()}"' in fetch
    assert ["python3", "/opt/cloudpilot/fetch-pilot.py"] in doc["runcmd"]
    tar = tarfile.open(fileobj=io.BytesIO(ctx.pilot_tarball()))
    names = sorted(tar.getnames())
    assert "pilot/__main__.py" in names and "pilot/agent.py" in names
    agent = tar.extractfile("pilot/agent.py")
    assert agent is not None and agent.read() == ctx.shipped_source(ctx.PILOT_PACKAGE /
                                                                    "agent.py")
    assert "class Agent" in ctx.shipped_source(ctx.PILOT_PACKAGE / "agent.py").decode()
    # fits EC2's user-data limit, and renders the same bytes every time
    assert len(text.encode()) < ctx.EC2_USER_DATA_LIMIT
    assert rendered("aws-pilot") == text


def test_ssh_mode_is_only_a_user_with_the_endpoints_key():
    doc = yaml.safe_load(rendered("aws-ssh"))
    (user,) = doc["users"]
    assert user["name"] == "cloudpilot" and user["ssh_authorized_keys"] == [KEY]
    assert doc["disable_root"] is True and doc["ssh_pwauth"] is False
    assert "write_files" not in doc and TOKEN not in rendered("aws-ssh")


def test_the_local_driver_runs_the_pilot_templates_settings(tmp_path):
    ep = ENDPOINTS["local"]
    driver = LocalDriver(ep, tmp_path / "machines", "http://127.0.0.1:9", lambda m: TOKEN,
                         hide=["/srv/controller-data"])
    cfg = driver.pilot_config("local-0007")
    from_template = ctx.pilot_settings_from(ctx.render_pilot(
        ctx.pilot_settings(ep, "http://127.0.0.1:9", TOKEN, "local-0007"),
        max_machine_age=ep.max_machine_age))
    assert cfg == {**from_template, "workdir": str(tmp_path / "machines/local/local-0007/work"),
                   "hide": [str(tmp_path / "machines"), "/srv/controller-data"]}
    assert cfg["isolation"] == "bwrap" and from_template["hide"] == ["/var/lib/cloudpilot",
                                                                     "/opt/cloudpilot"]
    assert cfg["slots"] == 3 and cfg["tags"] == ["linux", "fast"]


def test_the_tarball_is_reproducible():
    blob = ctx.pilot_tarball()
    assert bz2.decompress(blob)  # a bzip2 stream (no timestamp): same bytes, same sources
    assert blob == ctx.pilot_tarball.__wrapped__()
    assert hashlib.sha256(blob).hexdigest() in rendered("local")  # its pin


def test_a_cloud_machine_powers_itself_off_at_its_max_age_controller_or_not(tmp_path):
    """The shutdown timer needs no pilot and no controller: it is enabled first thing, and a
    cloud machine set to terminate on shutdown then ends its cost."""
    ep = endpoint_config(name="aws-pilot", driver="aws", aws=AWS, max_machine_age=7200)
    text = ctx.user_data(ep, "http://10.0.0.5:8080", TOKEN, "aws-pilot-0002")
    doc = yaml.safe_load(text)
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    timer = files["/etc/systemd/system/cloudpilot-max-age.timer"]
    assert "OnBootSec=7200s" in timer and "WantedBy=timers.target" in timer
    assert "Unit=cloudpilot-max-age.service" in timer
    assert "ExecStart=/bin/systemctl --no-block poweroff" in files[
        "/etc/systemd/system/cloudpilot-max-age.service"]
    run = doc["runcmd"]
    enable = ["systemctl", "enable", "--now", "cloudpilot-max-age.timer"]
    assert run.index(["systemctl", "daemon-reload"]) < run.index(enable) < run.index(
        ["python3", "/opt/cloudpilot/fetch-pilot.py"])
    assert ctx.pilot_settings_from(text)["orphan_timeout"] == 600.0
    # cloud-init's own schema check of every rendered user-data: test_outside_tools.py
