"""The shepherd (pilot/shepherd.py) with real processes: nothing of a job outlives the job,
its lease, or its pilot."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from pilot import shepherd
from tests.conftest import wait_until


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start(script: str, tmp: Path, lease: float = 60.0, grace: float = 1.0
          ) -> subprocess.Popen[bytes]:
    cmd = shepherd.command(["/bin/sh", "-c", script], time.time() + lease, grace)
    return subprocess.Popen(cmd, cwd=tmp, stdin=subprocess.PIPE, start_new_session=True)


def pids(tmp: Path, n: int) -> list[int]:
    """The PIDs the payload wrote to tmp/pids (one a line), once there are n."""
    f = tmp / "pids"
    wait_until(lambda: f.exists() and len(f.read_text().split()) >= n, 10, what="payload")
    return [int(x) for x in f.read_text().split()]


# a payload with a background child and one that left for a session of its own
TREE = ("sleep 300 & echo $! >> pids; setsid sh -c 'echo $$ >> pids; exec sleep 301' & "
        "echo $$ >> pids; ")


def test_what_a_payload_leaves_behind_dies_with_it_and_its_status_comes_back(tmp_path):
    p = start(TREE + "while [ $(wc -l < pids) -lt 3 ]; do sleep 0.05; done; exit 3", tmp_path)
    assert p.wait(10) == 3
    assert not any(alive(x) for x in pids(tmp_path, 3))


def test_a_lease_not_renewed_ends_the_whole_tree_and_renewals_extend_it(tmp_path):
    p = start(TREE + "sleep 300", tmp_path, lease=2.0)
    tree = pids(tmp_path, 3)
    assert p.stdin is not None
    for _ in range(3):  # renewed for 3 s: still running
        p.stdin.write(f"{time.time() + 1.5}\n".encode())
        p.stdin.flush()
        time.sleep(1)
    assert p.poll() is None and all(alive(x) for x in tree)
    started = time.monotonic()
    assert p.wait(10) == -signal.SIGKILL  # no renewal: killed at the lease's end
    assert time.monotonic() - started < 2.5
    assert not any(alive(x) for x in tree)


def test_the_pilot_gone_or_saying_kill_ends_the_tree_at_once(tmp_path):
    for how in ("eof", "kill"):
        d = tmp_path / how
        d.mkdir()
        p = start(TREE + "sleep 300", d)
        tree = pids(d, 3)
        assert p.stdin is not None
        if how == "eof":
            p.stdin.close()  # what the pilot's death looks like
        else:
            p.stdin.write(b"kill\n")
            p.stdin.flush()
        assert p.wait(5) == -signal.SIGKILL
        assert not any(alive(x) for x in tree)


def test_sigterm_reaches_the_payload_and_the_tree_dies_after_the_grace(tmp_path):
    p = start("trap 'echo term >> got; exit 7' TERM; echo $$ >> pids; sleep 300 & wait",
              tmp_path)
    pids(tmp_path, 1)
    p.send_signal(signal.SIGTERM)
    assert p.wait(5) == 7 and (tmp_path / "got").read_text() == "term\n"
    stubborn = start("trap '' TERM; echo $$ >> pids; sleep 300", tmp_path, grace=1.0)
    tree = pids(tmp_path, 2)
    time.sleep(0.2)
    t0 = time.monotonic()
    stubborn.send_signal(signal.SIGTERM)
    assert stubborn.wait(5) == -signal.SIGKILL and 0.9 < time.monotonic() - t0 < 3
    assert not alive(tree[-1])


def test_a_payload_killed_at_its_lease_before_a_late_renewal_is_interrupted(tmp_path):
    """Issue 26 (bench.chaos lost a job this way): the pilot is frozen past the lease, the
    shepherd kills the payload at the deadline, the pilot resumes and a heartbeat renews the
    lease before the pilot looks at the payload's status. The payload ended at the lease:
    'interrupted' (the job runs again), not 'failed: terminated by signal 9'."""
    from pilot.runner import JobRun
    from pilot.sandbox import Sandbox

    (tmp_path / "work").mkdir()
    spec = {"id": 9, "executable": "/bin/sh", "arguments": ["-c", "sleep 30"],
            "requirements": {"cores": 1, "memory_mb": 64, "max_runtime": 60}}
    run = JobRun(spec, "cp_jobtoken", tmp_path / "work", "http://127.0.0.1:9",
                 sandbox=Sandbox("none"))
    run.lease_until = time.time() + 1.0
    run.prepare()
    run.start()
    assert run.proc is not None
    wait_until(lambda: run.proc.poll() is not None, 10, 0.05, "the shepherd to end it")
    run.renew(time.time() + 60)  # the late renewal, before the pilot's look
    outcome = run.wait()
    run.cleanup()
    assert outcome.status == "interrupted" and "lease ran out" in (outcome.reason or ""), \
        outcome
