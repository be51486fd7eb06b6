"""Checked by the real tools, each run once as a command (no server): `cloud-init schema` on
every rendered user-data, python3 running the pilot bundle, ssh-keygen's fingerprints."""

import base64
import hashlib
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from controller.drivers import contextualization as ctx
from controller.drivers.bundle import pilot_zipapp
from controller.drivers.ssh import fingerprint
from tests.unit.test_contextualization import ENDPOINTS, SCHEMA, rendered, schema_keys

CLOUD_INIT = shutil.which("cloud-init")


@pytest.mark.skipif(CLOUD_INIT is None, reason="cloud-init is not installed (make test "
                    "installs the Debian package: bash tests/system-deps.sh cloud-init)")
@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_every_rendered_user_data_is_valid_cloud_config(name, tmp_path):
    text = rendered(name)
    f = tmp_path / "user-data"
    f.write_text(text)
    r = subprocess.run([CLOUD_INIT, "schema", "--config-file", str(f)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Valid cloud-config" in r.stdout
    # cloud-init does not flag unknown top-level keys: check them against its own schema
    ctx.check_cloud_config(text, name, known=schema_keys() if SCHEMA.exists() else
                           ctx.CLOUD_CONFIG_KEYS)


def test_the_pilot_bundle_is_the_same_bytes_each_time(tmp_path: Path):
    a = pilot_zipapp(tmp_path / "a.pyz").read_bytes()
    b = pilot_zipapp(tmp_path / "b.pyz").read_bytes()
    assert a == b  # so copying it to a host is idempotent
    names = zipfile.ZipFile(tmp_path / "a.pyz").namelist()
    assert "__main__.py" in names and "pilot/agent.py" in names
    assert not any("controller" in n or n.endswith(".pyc") for n in names)
    r = subprocess.run(["python3", str(tmp_path / "a.pyz"), "--help"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and "--config" in r.stdout


def test_fingerprint_matches_openssh(tmp_path: Path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    pub = (tmp_path / "k.pub").read_text().split()
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")],
                         capture_output=True, text=True, check=True).stdout
    assert fingerprint(pub[1]) == out.split()[1]
    raw = hashlib.sha256(base64.b64decode(pub[1])).digest()
    assert fingerprint(pub[1]).startswith("SHA256:" + base64.b64encode(raw).decode()[:10])



