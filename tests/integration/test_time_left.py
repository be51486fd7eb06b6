"""The time-left rule: a pilot that will be killed at a known time (a batch job's wall time)
says how long it has left when it asks for work, and is handed no job whose max_runtime is
longer; when its time is up and it is idle, it leaves."""

from __future__ import annotations

import time

import pytest

from tests.conftest import sh, wait_until

pytestmark = pytest.mark.integration


def test_a_pilot_gets_only_jobs_that_end_before_its_deadline(make_controller):
    ctrl = make_controller()
    long_id, short_id = ctrl.submit("alice", sh("echo long", max_runtime=300),
                                    sh("echo short", max_runtime=60))
    pilot = ctrl.start_pilot("m1", deadline=time.time() + 100, time_margin=10)
    assert ctrl.wait_state(short_id, "done")["machine"] == "m1"
    ctrl.wait_long_polls(1)  # m1 asked again, and got nothing
    assert ctrl.job(long_id)["state"] == "waiting"  # 300 s > the 90 s m1 has left

    late = ctrl.start_pilot("m2", deadline=time.time() + 12, time_margin=10)
    assert late.wait(15) == 0  # 2 s left, then none: it leaves on its own
    assert "its time is up" in (ctrl.root / "pilots" / "m2" / "pilot.log").read_text()
    assert ctrl.job(long_id)["state"] == "waiting"

    roomy = ctrl.start_pilot("m3", deadline=time.time() + 1000, time_margin=10)
    assert ctrl.wait_state(long_id, "done")["machine"] == "m3"
    for p in (pilot, roomy):
        p.terminate()
    wait_until(lambda: pilot.poll() is not None and roomy.poll() is not None, 10,
               what="the pilots to exit")
