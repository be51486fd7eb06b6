"""A real Slurm cluster for tests: Debian's munged, slurmctld and slurmd (22.05), started by the
test on a test host that also runs sshd (tests/sshhosts.py), so the controller reaches its
login node over SSH as it would a real site's.

With network namespaces (root): one namespace host `h1` runs sshd, slurmctld and one slurmd
(node `n1`), each daemon with its own hostname (`unshare --uts`, since plain `ip netns exec`
breaks slurmd's view of /sys/fs/cgroup); pilots started by slurmd reach the controller on the
bridge's address. Without namespaces: sshd on 127.0.0.x and the daemons on the loopback.
munged runs in the test's own namespace (its socket is a file, shared by all).

The node has `cpus` CPUs whatever the hardware (`SlurmdParameters=config_overrides`); jobs are
tracked by process tree (`proctrack/linuxproc`); no accounting daemon (so no `sacct`: ended jobs
stay visible to `squeue -t all` for MinJobAge seconds). Clients find the config through
SLURM_CONF, which sshd sets in every session (`SetEnv`). `close()` stops every daemon by PID.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.sshhosts import SshHost, SshHosts

CTLD_HOST = "cpslurmctl"  # slurmctld's hostname (its own UTS namespace)
NODE = "n1"


def wait_for(pred, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            tail = log.read_text()[-1500:] if log is not None and log.exists() else ""
            raise RuntimeError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.1)


@dataclass
class SlurmCluster:
    root: Path
    cpus: int = 4
    memory_mb: int = 4096
    partition: str = "batch"
    hosts: SshHosts = field(init=False)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    munge: Path = Path()

    @property
    def login(self) -> SshHost:
        return self.hosts.host("h1")

    @property
    def conf(self) -> Path:
        return self.root / "slurm" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def setup(self) -> SlurmCluster:
        self.hosts = SshHosts(self.root / "hosts", 1).setup()
        d = self.root / "slurm"
        for sub in ("state", "spool"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        # munged wants every folder above its socket searchable by all (pytest's are 0700)
        self.munge = Path(tempfile.mkdtemp(prefix="cp-munge-"))
        self.munge.chmod(0o711)
        key = d / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        addr = self.login.address
        ctld_host = CTLD_HOST if self.hosts.netns else os.uname().nodename
        port = 16817 + (os.getpid() % 1000) * 2  # own ports: the daemons bind 0.0.0.0
        self.conf.write_text("\n".join([
            "ClusterName=cptest",
            f"SlurmctldHost={ctld_host}({addr})",
            f"SlurmctldPort={port}", f"SlurmdPort={port + 1}",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", f"AuthInfo=socket={self.munge / 'munge.socket'}",
            "CredType=cred/munge",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
            "SlurmdParameters=config_overrides",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt", f"JobCompLoc={d / 'jobcomp.txt'}",
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
            "MinJobAge=300", "KillWait=5", "MpiDefault=none", "ReturnToService=2",
            "SwitchType=switch/none", "JobAcctGatherType=jobacct_gather/none",
            f"StateSaveLocation={d / 'state'}", f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}", f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'slurmctld.log'}", f"SlurmdLogFile={d / 'slurmd.log'}",
            "SlurmctldDebug=info", "SlurmdDebug=info",
            f"NodeName={NODE} NodeAddr={addr} CPUs={self.cpus} "
            f"RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={NODE} Default=YES MaxTime=INFINITE "
            "State=UP",
            "PartitionName=small Nodes=n1 MaxTime=INFINITE State=UP MaxCPUsPerNode=1",
            "",
        ]))
        cfg = self.login.dir / "sshd_config"
        cfg.write_text(cfg.read_text() + f"SetEnv SLURM_CONF={self.conf}\n")
        return self

    def _daemon(self, name: str, argv: list[str], hostname: str | None) -> None:
        log = open(self.root / "slurm" / f"{name}.out", "ab")
        if self.login.netns and hostname:
            argv = ["nsenter", f"--net=/run/netns/{self.login.netns}", "unshare", "--uts",
                    "sh", "-c", f"hostname {hostname}; exec {' '.join(argv)}"]
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env,
                                            start_new_session=True)

    def start(self) -> SlurmCluster:
        d = self.root / "slurm"
        self.login.start()
        self._daemon("munged", ["munged", "-F", f"--key-file={d / 'munge.key'}",
                                f"--socket={self.munge / 'munge.socket'}",
                                f"--pid-file={self.munge / 'munged.pid'}",
                                f"--seed-file={self.munge / 'seed'}",
                                f"--log-file={d / 'munged.log'}"], None)
        wait_for(lambda: (self.munge / "munge.socket").exists(), 10, "munged", d / "munged.log")
        self._daemon("slurmctld", ["slurmctld", "-D", "-i"], CTLD_HOST)
        self._daemon("slurmd", ["slurmd", "-D", "-N", NODE], "n1")
        wait_for(self._node_idle, 30, "node n1 idle", d / "slurmctld.log")
        return self

    def _node_idle(self) -> bool:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited: "
                                   + (self.root / "slurm" / f"{name}.out").read_text()[-1500:])
        out = self.run("sinfo", "-h", "-n", NODE, "-o", "%t", check=False)
        return out.strip() == "idle"

    def run(self, *argv: str, check: bool = True) -> str:
        """A Slurm client command, run from the test (the controller uses SSH)."""
        p = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=20)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip()}")
        return p.stdout

    def jobs(self, *states: str) -> list[dict[str, str]]:
        """Jobs Slurm knows (`squeue -t all`): id, name, state, cpus."""
        out = self.run("squeue", "-h", "-t", ",".join(states) or "all",
                       "-o", "%i|%j|%T|%C")
        rows = [ln.split("|") for ln in out.splitlines() if ln.strip()]
        return [{"id": r[0], "name": r[1], "state": r[2], "cpus": r[3]} for r in rows]

    def busy_cpus(self) -> int:
        """CPUs allocated on the node now (scontrol's CPUAlloc)."""
        out = self.run("scontrol", "-o", "show", "node", NODE)
        for word in out.split():
            if word.startswith("CPUAlloc="):
                return int(word.split("=", 1)[1])
        return 0

    def cancel_all(self) -> None:
        self.run("scancel", "--full", "-p", self.partition, check=False)
        self.run("scancel", "--full", "-p", "small", check=False)
        wait_for(lambda: not self.jobs("PENDING", "RUNNING", "COMPLETING"), 20, "an empty queue")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run("scancel", "--full", "-p", self.partition, check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
        # pilots and payloads slurmd started: in the namespace (or under our root dir)
        self.hosts.close()
        if self.munge != Path():
            shutil.rmtree(self.munge, ignore_errors=True)
