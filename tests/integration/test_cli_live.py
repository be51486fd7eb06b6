"""`cloudpilot job ID --follow`, `cloudpilot watch` (plain and rich) and JSON logs, against a
real controller whose local endpoint starts a machine for the job."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Any

from controller.cli.client import ApiClient
from controller.cli.live import watch
from tests.conftest import LOCAL, REPO, sh, wait_until


def cli(ctrl: Any, who: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, CLOUDPILOT_URL=ctrl.url, CLOUDPILOT_TOKEN=ctrl.tokens[who])
    return subprocess.Popen([sys.executable, "-m", "controller", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_follow_watch_and_json_logs(make_controller: Any) -> None:
    ctrl = make_controller(endpoints=[LOCAL], log_format="json")
    [ok] = ctrl.submit("alice", sh("echo line one; sleep 1; echo line two"))
    follow = cli(ctrl, "alice", "job", str(ok), "--follow")
    out, err = follow.communicate(timeout=60)
    assert follow.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"job {ok} ")
    assert [ln.split("-> ")[1].split()[0] for ln in lines if "-> " in ln] == [
        "received", "waiting", "matched", "running", "done"]
    assert "[local-0001]" in out  # where it was matched
    assert out.rstrip().endswith("line one\nline two")

    [bad] = ctrl.submit("alice", sh("echo oops >&2; exit 4"))
    follow = cli(ctrl, "alice", "job", str(bad), "--follow")
    out, _ = follow.communicate(timeout=60)
    assert follow.returncode == 1 and "-> failed" in out and "oops" in out
    # another owner's job cannot be followed
    follow = cli(ctrl, "bob", "job", str(ok), "--follow")
    _, err = follow.communicate(timeout=30)
    assert follow.returncode == 1 and "no job" in err

    # watch, plain (not a terminal) and once
    w = cli(ctrl, "alice", "watch", "--once")
    out, err = w.communicate(timeout=30)
    assert w.returncode == 0, err
    assert " jobs: waiting 0 matched 0 running 0 done 1 failed 1 " in out
    assert "machines: local " in out and "spend $0.00/h" in out
    # ... and drawn by rich
    buf = io.StringIO()
    assert watch(ApiClient(ctrl.url, ctrl.tokens["admin"]), plain=False, once=True, out=buf) == 0
    drawn = buf.getvalue()
    assert "jobs by state" in drawn and "machines by endpoint" in drawn and "local" in drawn

    # JSON logs: one object a line; requests carry the job or pilot their path names, and the
    # loop's decisions their endpoint
    def records() -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in ctrl.log().splitlines() if ln.startswith("{")]

    wait_until(lambda: any(r.get("endpoint") == "local" and "decision" in r["message"]
                           for r in records()), 20, what="a decision line")
    recs = records()
    assert any(r.get("job") == str(ok) and r.get("path") == f"/api/v1/jobs/{ok}" and
               r.get("status") == 200 for r in recs)
    assert any(r.get("pilot") and r.get("path", "").endswith("/heartbeat") for r in recs)
    assert not any(ctrl.tokens["alice"] in json.dumps(r) for r in recs)  # no secrets
