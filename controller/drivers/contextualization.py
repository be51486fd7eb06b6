"""Contextualization: the cloud-init user-data each machine boots with (templates in
cloud-init/). `pilot` mode starts a pilot at boot; `ssh` mode only makes a user with the
endpoint's public key.

The user-data of a pilot machine holds the machine's one-time bootstrap token: never log it
(its pilot spends it when it registers, so what the metadata service keeps is dead). Rendering is
deterministic (same inputs, same bytes), so a stack never sees a change that is not one."""

from __future__ import annotations

import ast
import base64
import bz2
import gzip
import hashlib
import io
import json
import re
import tarfile
import threading
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from controller.config.settings import CloudEndpointConfig, EndpointConfig
from controller.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = REPO_ROOT / "cloud-init"
PILOT_PACKAGE = REPO_ROOT / "pilot"
PILOT_CONFIG_PATH = "/etc/cloudpilot/pilot.json"
PILOT_HOME = "/var/lib/cloudpilot"
PILOT_WORKDIR = f"{PILOT_HOME}/work"
PILOT_CODE = "/opt/cloudpilot"
EC2_USER_DATA_LIMIT = 16384  # bytes, before base64
PILOT_CODE_ROUTE = "/api/v1/pilot/code"  # the pilot's code as cloud machines fetch it
EC2_METADATA_URL = "http://169.254.169.254"

# The top-level keys cloud-init (22.4) knows. `cloud-init schema` does not flag unknown ones,
# so a misspelt module key would be silently ignored on the machine: check them here.
CLOUD_CONFIG_KEYS = frozenset("""
allow_public_ssh_keys ansible apk_repos apt apt_pipelining apt_reboot_if_required apt_update
apt_upgrade authkey_hash autoinstall bootcmd byobu_by_default ca-certs ca_certs chef chpasswd
cloud_config_modules cloud_final_modules cloud_init_modules device_aliases disable_ec2_metadata
disable_root disable_root_opts disk_setup drivers fan final_message fqdn fs_setup groups growpart
grub-dpkg grub_dpkg hostname keyboard landscape locale locale_configfile lxd manage_etc_hosts
manage_resolv_conf mcollective migrate mount_default_fields mounts no_ssh_fingerprints ntp
package_reboot_if_required package_update package_upgrade packages password phone_home
power_state prefer_fqdn_over_hostname preserve_hostname puppet random_seed reporting
resize_rootfs resolv_conf rh_subscription rsyslog runcmd salt_minion snap spacewalk ssh
ssh_authorized_keys ssh_deletekeys ssh_fp_console_blacklist ssh_genkeytypes ssh_import_id
ssh_key_console_blacklist ssh_keys ssh_publish_hostkeys ssh_pwauth ssh_quiet_keygen swap
timezone ubuntu_advantage updates user users vendor_data wireguard write_files yum_repo_dir
yum_repos zypper
""".split())

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")


class ContextualizationError(ConfigError):
    """The machine's user-data could not be rendered."""


def render(template: str, values: dict[str, str]) -> str:
    """Fill a template's {{ name }} placeholders with JSON-quoted values (YAML strings)."""
    text = (TEMPLATES / template).read_text()
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - set(values))
    if missing:
        raise ContextualizationError(f"template {template} needs values for {missing}")
    out = _PLACEHOLDER.sub(lambda m: json.dumps(values[m.group(1)]), text)
    check_cloud_config(out, template)
    return out


def check_cloud_config(text: str, what: str = "user-data",
                       known: frozenset[str] = CLOUD_CONFIG_KEYS) -> dict[str, Any]:
    """Parse a #cloud-config document; refuse one cloud-init would misread."""
    if not text.startswith("#cloud-config\n"):
        raise ContextualizationError(f"{what} does not start with #cloud-config")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ContextualizationError(f"{what} is not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ContextualizationError(f"{what} is not a mapping")
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ContextualizationError(f"{what} has keys cloud-init does not know: {unknown}")
    return doc


# CPython 3.11's AST objects keep one recursion count for the interpreter: two threads parsing
# at once can fail with "AST constructor recursion depth mismatch" (seen when a request's thread
# built the pilot's code while a test did): one parse at a time here
_AST_LOCK = threading.Lock()


def parse(text: str) -> ast.Module:
    """`ast.parse`, one thread at a time (see _AST_LOCK): for every parse in a process that
    may also build a pilot's code."""
    with _AST_LOCK:
        return ast.parse(text)


def shipped_source(path: Path) -> bytes:
    """A pilot module as cloud machines get it: the same code without its comments and
    docstrings (EC2 takes at most 16 KB of user-data)."""
    with _AST_LOCK:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                          | ast.AsyncFunctionDef):
                first = node.body[0] if node.body else None
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                        and isinstance(first.value.value, str):
                    node.body = node.body[1:] or [ast.Pass()]
        return (ast.unparse(tree) + "\n").encode()


@lru_cache(maxsize=1)
def pilot_tarball() -> bytes:
    """The pilot package as a reproducible .tar.bz2 (fixed times and owners, sorted names;
    bzip2 packs these sources about 9% smaller than gzip, which keeps the user-data within
    EC2's 16 KB; the machine unpacks it with Python's tarfile, no bzip2 tool needed)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(PILOT_PACKAGE.glob("*.py")):
            data = shipped_source(path)
            info = tarfile.TarInfo(f"pilot/{path.name}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return bz2.compress(raw.getvalue(), compresslevel=9)


def pilot_settings(endpoint: EndpointConfig, controller_url: str, token: str,
                   machine: str, spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a pilot started on one of the endpoint's machines is told; `spec` (priced
    endpoints) gives the machine type's cores, memory and slots."""
    e = endpoint
    spec = spec or {}
    return {
        "controller_url": controller_url,
        "token": token,
        "endpoint": e.name,
        "machine": machine,
        "slots": spec.get("slots", e.slots),
        "cores": spec.get("cores", e.cores),
        "memory_mb": spec.get("memory_mb", e.memory_mb),
        "tags": list(e.tags),
        # a safety net: the controller normally stops idle machines first, by name
        "idle_timeout": e.idle_timeout * 2 + 5,
        "orphan_timeout": e.orphan_timeout,
        "heartbeat_interval": e.heartbeat_interval,
        "workdir": PILOT_WORKDIR,
        "isolation": e.isolation,
        "hide": [PILOT_HOME, PILOT_CODE],  # besides its config and work dirs
        # on EC2 the pilot watches the metadata service for a spot interruption notice
        **({"metadata_url": EC2_METADATA_URL} if e.driver == "aws" else {}),
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pilot_code_sha256() -> str:
    return hashlib.sha256(pilot_tarball()).hexdigest()


def max_age_timer(max_machine_age: float) -> str:
    """The systemd timer that powers the machine off `max_machine_age` seconds after boot,
    whatever its pilot and controller do (a cloud machine terminates on shutdown)."""
    return ("[Unit]\nDescription=cloudpilot: power off at the machine's max_machine_age\n\n"
            f"[Timer]\nOnBootSec={max(60, int(max_machine_age))}s\nAccuracySec=30s\n"
            "Unit=cloudpilot-max-age.service\n\n[Install]\nWantedBy=timers.target\n")


def render_pilot(settings: dict[str, Any], *, max_machine_age: float) -> str:
    """`pilot` mode user-data for one machine: its settings, where it fetches the pilot's
    code (the controller's PILOT_CODE_ROUTE), pinned by its SHA-256, and its shutdown timer."""
    config = json.dumps(settings, sort_keys=True).encode()
    url = str(settings["controller_url"]).rstrip("/") + PILOT_CODE_ROUTE
    return render("pilot.yaml", {"pilot_config_b64": _b64(config), "pilot_code_url": url,
                                 "pilot_code_sha256": pilot_code_sha256(),
                                 "max_age_timer": max_age_timer(max_machine_age)})


def render_ssh(user: str, public_key: str) -> str:
    """`ssh` mode user-data: one user holding the endpoint's public key."""
    if not re.match(r"^(ssh-|ecdsa-|sk-)\S+ \S+", public_key):
        raise ContextualizationError("the public key is not an OpenSSH public key line")
    return render("ssh.yaml", {"ssh_user": user, "public_key": public_key})


def user_data(endpoint: EndpointConfig, controller_url: str, token: str, machine: str,
              spec: Mapping[str, Any] | None = None) -> str:
    """The user-data of one of the endpoint's machines, in the endpoint's mode."""
    if isinstance(endpoint, CloudEndpointConfig) and endpoint.contextualization == "ssh":
        cloud = endpoint.cloud()
        try:
            key = cloud.read_public_key() if cloud else None
        except ValueError as e:
            raise ContextualizationError(f"endpoint {endpoint.name}: {e}") from None
        if not key or cloud is None:
            raise ContextualizationError(f"endpoint {endpoint.name} has no public key")
        return render_ssh(cloud.ssh_user, key)
    return render_pilot(pilot_settings(endpoint, controller_url, token, machine, spec),
                        max_machine_age=endpoint.max_machine_age)


def written_file(user_data_text: str, path: str) -> bytes:
    """The content a cloud-config writes to `path` (write_files), decoded."""
    doc = check_cloud_config(user_data_text)
    for f in doc.get("write_files", []):
        if f.get("path") == path:
            content = f.get("content", "")
            enc = f.get("encoding", "text")
            if enc in ("b64", "base64"):
                return base64.b64decode(content)
            if enc in ("gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
                return gzip.decompress(base64.b64decode(content))
            return str(content).encode()
    raise ContextualizationError(f"the user-data writes no {path}")


def pilot_settings_from(user_data_text: str) -> dict[str, Any]:
    """The pilot settings a `pilot` mode user-data writes (what the local driver runs with)."""
    data: dict[str, Any] = json.loads(written_file(user_data_text, PILOT_CONFIG_PATH))
    return data
