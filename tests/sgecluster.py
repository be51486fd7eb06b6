"""A real Grid Engine cluster for tests: Debian's Son of Grid Engine 8.1.9 (sge_qmaster and
sge_execd), started by the test on a namespace host that also runs sshd (tests/sshhosts.py),
so the controller reaches its login node over SSH as it would a real site's.

Grid Engine wants every host name to resolve, and the same way for all its daemons: the
namespace host `h1` gets its own host name (cpsgeTAG, TAG from the test's PID, so that runs in
parallel do not meet) through a UTS namespace, and the namespace's own hosts file
(/etc/netns/NS/hosts, which `ip netns exec` puts over /etc/hosts) names its address. sshd,
sge_qmaster and sge_execd all run there; so do the sessions the controller opens, so `qsub`
on the "login node" sees the cluster as a user's shell would.

The cluster is a cell of its own (SGE_ROOT under the test's directory, linking Debian's
binaries; classic spooling; own ports), with one queue of `slots` slots, a parallel
environment `smp`, a scheduler run every second, and the accounting file written at once.
Debian's packages ask debconf questions at install: `install()` preseeds "do not configure"
and installs them non-interactively. `close()` stops the daemons by PID and removes the hosts
file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.slurmcluster import wait_for
from tests.sshhosts import SshHost, SshHosts

PACKAGES = ("gridengine-master", "gridengine-exec", "gridengine-client")
BIN = Path("/usr/lib/gridengine")
DEBIAN_ROOT = Path("/var/lib/gridengine")
CELL = "cp"
PRESEED = "".join(f"{p} shared/gridengineconfig boolean false\n"
                  for p in ("gridengine-common", *PACKAGES))


def installed() -> bool:
    return (BIN / "sge_qmaster").exists() and (BIN / "sge_execd").exists()


def install() -> None:
    """Install Debian's Grid Engine packages, answering their questions beforehand (no
    automatic configuration: the test makes its own cell)."""
    if installed():
        return
    if os.geteuid() != 0:
        raise RuntimeError("Grid Engine is not installed, and installing it needs root")
    subprocess.run(["debconf-set-selections"], input=PRESEED, text=True, check=True,
                   timeout=60)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    p = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        *PACKAGES], env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True,
                       timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        *PACKAGES], env=env, check=True, capture_output=True, timeout=600)


QUEUE = """qname all.q
hostlist {host}
seq_no 0
load_thresholds NONE
suspend_thresholds NONE
nsuspend 1
suspend_interval 00:05:00
priority 0
min_cpu_interval 00:05:00
processors UNDEFINED
qtype BATCH INTERACTIVE
ckpt_list NONE
pe_list smp
rerun FALSE
slots {slots}
tmpdir /tmp
shell /bin/sh
prolog NONE
epilog NONE
shell_start_mode unix_behavior
starter_method NONE
suspend_method NONE
resume_method NONE
terminate_method NONE
notify 00:00:60
owner_list NONE
user_lists NONE
xuser_lists NONE
subordinate_list NONE
complex_values NONE
projects NONE
xprojects NONE
calendar NONE
initial_state default
""" + "".join(f"{x}_{r} INFINITY\n" for r in ("rt", "cpu", "fsize", "data", "stack", "core",
                                               "rss", "vmem") for x in "sh")

PE = """pe_name smp
slots 999
user_lists NONE
xuser_lists NONE
start_proc_args NONE
stop_proc_args NONE
allocation_rule $pe_slots
control_slaves FALSE
job_is_first_task TRUE
urgency_slots min
accounting_summary FALSE
qsort_args NONE
"""


@dataclass
class SgeCluster:
    root: Path
    slots: int = 4
    hosts: SshHosts = field(init=False)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    hostname: str = ""
    port: int = 0
    etc: Path | None = None  # /etc/netns/NS: the namespace's hosts file

    @property
    def login(self) -> SshHost:
        return self.hosts.host("h1")

    @property
    def sge_root(self) -> Path:
        return self.root / "sge"

    @property
    def accounting(self) -> Path:
        return self.sge_root / CELL / "common" / "accounting"

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SGE_ROOT=str(self.sge_root), SGE_CELL=CELL,
                    SGE_QMASTER_PORT=str(self.port), SGE_EXECD_PORT=str(self.port + 1))

    def setup(self) -> SgeCluster:
        install()
        self.hosts = SshHosts(self.root / "hosts", 1).setup()
        if not self.hosts.netns:
            self.hosts.close()
            raise RuntimeError("the Grid Engine test cluster needs network namespaces (root)")
        tag = os.getpid() % 100_000
        self.hostname = f"cpsge{tag}"
        self.port = 26444 + (os.getpid() % 1000) * 2
        login = self.login
        login.hostname = self.hostname
        assert login.netns is not None
        self.etc = Path("/etc/netns") / login.netns
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "hosts").write_text(f"127.0.0.1 localhost\n{login.address} "
                                        f"{self.hostname}\n")
        r = self.sge_root
        common = r / CELL / "common"
        common.mkdir(parents=True)
        for d in ("bin", "lib", "utilbin", "util"):
            (r / d).symlink_to(DEBIAN_ROOT / d)
        spool = r / "spool"
        for d in ("qmaster", "execd"):
            (spool / d).mkdir(parents=True)
        (common / "bootstrap").write_text("\n".join([
            "admin_user none", "default_domain none", "ignore_fqdn true",
            "spooling_method classic", "spooling_lib libspoolc",
            f"spooling_params {common};{spool / 'qmaster'}", f"binary_path {BIN}",
            f"qmaster_spool_dir {spool / 'qmaster'}", "security_mode none",
            "listener_threads 2", "worker_threads 2", "scheduler_threads 1", ""]))
        (common / "act_qmaster").write_text(self.hostname + "\n")
        conf = Path("/usr/share/gridengine/default-configuration").read_text().splitlines()
        over = {"execd_spool_dir": str(spool / "execd"), "min_uid": "0", "min_gid": "0",
                "reporting_params": "accounting=true reporting=false flush_time=00:00:01 "
                "joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00",
                "load_report_time": "00:00:05", "mailer": "/bin/true"}
        lines = [f"{w[0]} {over[w[0]]}" if (w := ln.split()) and w[0] in over else ln
                 for ln in conf]
        (r / "global.conf").write_text("\n".join(lines) + "\n")
        for argv in (["spoolinit", "classic", "libspoolc", f"{common};{spool / 'qmaster'}",
                      "init"],
                     ["spooldefaults", "configuration", str(r / "global.conf")],
                     ["spooldefaults", "complexes",
                      "/usr/share/gridengine/util/resources/centry"],
                     ["spooldefaults", "usersets",
                      "/usr/share/gridengine/util/resources/usersets"],
                     ["spooldefaults", "managers", "root"]):
            subprocess.run([str(BIN / argv[0]), *argv[1:]], env=self.env, check=True,
                           capture_output=True, timeout=30)
        cfg = login.dir / "sshd_config"
        cfg.write_text(cfg.read_text() + "SetEnv " + " ".join(  # (only one SetEnv counts)
            f"{k}={self.env[k]}" for k in ("SGE_ROOT", "SGE_CELL", "SGE_QMASTER_PORT",
                                            "SGE_EXECD_PORT")) + "\n")
        return self

    def _prefix(self) -> list[str]:
        assert self.login.netns is not None
        return ["ip", "netns", "exec", self.login.netns, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', self.hostname]

    def _daemon(self, name: str) -> None:
        log = open(self.root / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(
            [*self._prefix(), str(BIN / name)], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=dict(self.env, SGE_ND="1"), start_new_session=True)

    def start(self) -> SgeCluster:
        self.login.start()
        self._daemon("sge_qmaster")
        messages = self.sge_root / "spool" / "qmaster" / "messages"
        wait_for(lambda: self._alive() and self.run("qconf", "-sh", check=False).strip() != "",
              30, "sge_qmaster", messages)
        d = self.root
        (d / "pe.conf").write_text(PE)
        (d / "queue.conf").write_text(QUEUE.format(host=self.hostname, slots=self.slots))
        sched = self.run("qconf", "-ssconf")
        fast = {"schedule_interval": "0:0:1", "flush_submit_sec": "1",
                "flush_finish_sec": "1"}
        (d / "sched.conf").write_text("\n".join(
            f"{w[0]} {fast[w[0]]}" if (w := ln.split()) and w[0] in fast else ln
            for ln in sched.splitlines()) + "\n")
        self.run("qconf", "-as", self.hostname)
        self.run("qconf", "-Ap", str(d / "pe.conf"))
        self.run("qconf", "-Msconf", str(d / "sched.conf"))
        self._daemon("sge_execd")
        wait_for(lambda: self._alive() and self.hostname in self.run("qconf", "-sel",
                                                                  check=False),
              30, "sge_execd to register", messages)
        self.run("qconf", "-Aq", str(d / "queue.conf"))
        wait_for(self._queue_up, 30, "the queue to come up", messages)
        return self

    def _alive(self) -> bool:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited: "
                                   + (self.root / f"{name}.out").read_text()[-1500:])
        return True

    def _queue_up(self) -> bool:
        """The queue instance reports load (no `u`nknown state)."""
        out = self.run("qstat", "-f", check=False)
        line = next((ln for ln in out.splitlines() if ln.startswith("all.q@")), "")
        words = line.split()
        return len(words) >= 5 and "-NA-" not in line and (len(words) == 5 or
                                                          "u" not in words[5])

    def run(self, *argv: str, check: bool = True) -> str:
        """A Grid Engine client command, run on the cluster's host (the controller uses
        SSH)."""
        p = subprocess.run([*self._prefix(), *argv], capture_output=True, text=True,
                           env=self.env, timeout=20)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {(p.stderr or p.stdout).strip()}")
        return p.stdout

    def jobs(self, *states: str) -> list[dict[str, str]]:
        """Jobs in qstat (pending and running): id, name, state code, slots. `states`:
        'pending' and/or 'running' (default both)."""
        import xml.etree.ElementTree as ET

        out = self.run("qstat", "-xml", "-u", "*")
        rows = []
        for j in ET.fromstring(out).iter("job_list"):
            kind = "pending" if j.get("state") == "pending" else "running"
            if states and kind not in states:
                continue
            rows.append({"id": j.findtext("JB_job_number") or "",
                         "name": j.findtext("JB_name") or "", "state": j.findtext("state")
                         or "", "kind": kind, "slots": j.findtext("slots") or "0"})
        return rows

    def ended(self) -> list[dict[str, str]]:
        """Ended jobs from the accounting file: id, name, failed, exit_status."""
        if not self.accounting.exists():
            return []
        rows = []
        for ln in self.accounting.read_text().splitlines():
            f = ln.split(":")
            if len(f) > 12 and not ln.startswith("#"):
                rows.append({"id": f[5], "name": f[4], "failed": f[11], "exit_status": f[12]})
        return rows

    def busy_slots(self) -> int:
        return sum(int(j["slots"]) for j in self.jobs("running"))

    def cancel_all(self) -> None:
        self.run("qdel", "-u", "*", check=False)
        wait_for(lambda: not self.jobs(), 30, "an empty queue")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run("qdel", "-u", "*", check=False)
        live = [p for p in self.procs.values() if p.poll() is None]
        for p in live:  # both at once: each takes seconds to shut down
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in live:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        # pilots and payloads the execd started: in the namespace
        with contextlib.suppress(AttributeError):
            self.hosts.close()
        if self.etc is not None:
            shutil.rmtree(self.etc, ignore_errors=True)
            self.etc = None
