"""Test hosts for SSH endpoints: real Debian openssh-server sshd instances, each on its own
address, with a generated host key and an authorized key made for the test.

Preferred: one network namespace per host (`ip netns add`), all joined to a bridge in the test's
namespace by veth pairs, on an address of 198.18.0.0/15 (the range set aside for network
benchmarks: nothing real lives there, and the namespaces have no other route). The controller
listens on the bridge's address, so pilots inside a namespace reach it as a real remote host's
pilot would. Where namespaces are not permitted: sshd on 127.0.0.x with distinct ports, and
the controller on 127.0.0.1.

Traffic goes only to these addresses. `close()` kills each sshd by PID, every process left in
the namespaces (pilots, payloads), deletes the namespaces and the bridge. Also used by
bench/ssh_latency.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=20)


def _ip(*args: str) -> None:
    _run("ip", *args)


def _can_use_namespaces() -> bool:
    if os.environ.get("CLOUDPILOT_TEST_NO_NETNS") or os.geteuid() != 0 or not shutil.which("ip"):
        return False
    name = f"cpprobe{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except (subprocess.CalledProcessError, OSError):
        return False
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip("netns", "del", name)
    return True


@dataclass
class SshHost:
    name: str
    address: str
    port: int
    dir: Path
    netns: str | None = None
    veth: str | None = None  # the outer end of its veth pair, in the test's namespace
    proc: subprocess.Popen[bytes] | None = None
    hostname: str | None = None  # its own host name (a UTS namespace), for its sshd's sessions

    @property
    def host_key_line(self) -> str:
        """This host's line for a known_hosts file."""
        pub = (self.dir / "ssh_host_ed25519_key.pub").read_text().split()
        where = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{where} {pub[0]} {pub[1]}"

    def _prefix(self) -> list[str]:
        """How a process starts on this host: in its network namespace (where `ip netns exec`
        also puts /etc/netns/NS/hosts over /etc/hosts), under its own host name if it has
        one."""
        if not self.netns:
            return []
        if not self.hostname:
            return ["ip", "netns", "exec", self.netns]
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', self.hostname]

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation dir
        log = open(self.dir / "sshd.log", "ab")
        self.proc = subprocess.Popen(
            [*self._prefix(), SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 10
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd of {self.name} did not start: "
                                   + (self.dir / "sshd.log").read_text()[-1000:])
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.address, self.port), timeout=0.5) as s:
                return s.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def kill_sshd(self) -> None:
        """Kill this host's sshd by PID (its listener and any session it serves)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def processes(self, marker: str | None = None) -> list[int]:
        """PIDs of processes on this host: those in its namespace (without namespaces: all)
        whose command line or working directory mentions `marker` (with namespaces and no
        marker: all but its sshd)."""
        if self.netns:
            out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True,
                                 text=True, timeout=10).stdout
            sshd = self.proc.pid if self.proc is not None else None
            pids = [int(p) for p in out.split() if int(p) != sshd]
        elif marker is None:
            return []
        else:
            pids = _all_pids()
        return [p for p in pids if marker is None or marker in _cmdline(p) or marker in _cwd(p)]

    def kill_processes(self, marker: str | None = None) -> None:
        for pid in self.processes(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def crash(self, marker: str | None = None) -> None:
        """The host goes down: its sshd and everything running on it die at once."""
        self.kill_sshd()
        self.kill_processes(marker)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


@dataclass
class SshHosts:
    """A set of test hosts sharing one client key."""

    root: Path
    count: int
    hosts: list[SshHost] = field(default_factory=list)
    netns: bool = False
    bridge: str | None = None
    controller_host: str = "127.0.0.1"  # where pilots on these hosts reach the controller
    key: Path = Path()
    user: str = "root"

    def setup(self) -> SshHosts:
        self.root.mkdir(parents=True, exist_ok=True)
        self.key = self.root / "id_ed25519"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cloudpilot-test",
             "-f", str(self.key))
        self.user = _user()
        self.netns = _can_use_namespaces()
        tag = os.getpid() % 100_000
        if self.netns:
            net = f"198.18.{tag % 250}"
            self.bridge = f"cpb{tag}"
            self.controller_host = f"{net}.1"
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{net}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        for i in range(1, self.count + 1):
            name = f"h{i}"
            d = self.root / name
            d.mkdir()
            if self.netns:
                ns = f"cp{tag}-{name}"
                outer, inner = f"cp{tag}o{i}", f"cp{tag}i{i}"
                host = SshHost(name, f"198.18.{tag % 250}.{10 + i}", 22, d, ns, outer)
                self.hosts.append(host)  # before creating it: close() cleans what exists
                _ip("netns", "add", ns)
                _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
                _ip("link", "set", inner, "netns", ns)
                _ip("link", "set", outer, "master", self.bridge, "up")
                _ip("-n", ns, "addr", "add", f"{host.address}/24", "dev", inner)
                _ip("-n", ns, "link", "set", inner, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
            else:
                host = SshHost(name, f"127.0.0.{1 + i}", _free_port(f"127.0.0.{1 + i}"), d)
                self.hosts.append(host)
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name,
                 "-f", str(d / "ssh_host_ed25519_key"))
            shutil.copy(self.key.with_suffix(".pub"), d / "authorized_keys")
            (d / "sshd_config").write_text("\n".join([
                f"Port {host.port}", f"ListenAddress {host.address}",
                f"HostKey {d / 'ssh_host_ed25519_key'}", f"PidFile {d / 'sshd.pid'}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                "UsePAM no", "StrictModes no", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
                f"AllowUsers {self.user}", "LogLevel ERROR",
                "Subsystem sftp /usr/lib/openssh/sftp-server", "",
            ]))
        return self

    def start(self, *names: str) -> None:
        for h in self.hosts:
            if not names or h.name in names:
                h.start()

    def known_hosts(self, path: Path, *names: str) -> Path:
        """Write a known_hosts file pinning these hosts' keys (all when none named)."""
        path.write_text("".join(h.host_key_line + "\n" for h in self.hosts
                                if not names or h.name in names))
        return path

    def host(self, name: str) -> SshHost:
        return next(h for h in self.hosts if h.name == name)

    def kill_all_processes(self, marker: str | None = None) -> None:
        """End pilots and payloads left on the hosts (their sshd stays up)."""
        for h in self.hosts:
            h.kill_processes(marker)

    def close(self) -> None:
        for h in self.hosts:
            h.kill_sshd()
            h.kill_processes(str(self.root))
            if h.netns:
                h.kill_processes()
                with contextlib.suppress(subprocess.CalledProcessError):
                    _ip("netns", "del", h.netns)
                with contextlib.suppress(subprocess.CalledProcessError):
                    _ip("link", "del", str(h.veth))  # else it lingers until the netns is freed
        if self.bridge:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", self.bridge)
            self.bridge = None


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])
