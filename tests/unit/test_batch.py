"""Batch endpoints: the pure decision (domain.batch), squeue parsing, the batch script, the
settings and the time-left rule."""

import pytest

from controller.config.settings import endpoint_config
from controller.domain.batch import BatchJob, BatchSpec, BatchState, PilotJob, decide_batch
from controller.domain.jobs import Requirements
from controller.domain.machines import MachineState as M
from controller.domain.machines import MachineView
from controller.domain.matching import SlotOffer, unmatchable_reason
from controller.domain.taskqueues import TaskQueue
from controller.drivers.batch import remote_base
from controller.drivers.slurm import parse_squeue
from controller.errors import ConfigError

SHAPE = SlotOffer("hpc", 1, 1024, frozenset({"linux"}), 3540)
SPEC = BatchSpec("hpc", SHAPE, slots=1, max_machines=6, max_queued=2, max_starts_per_cycle=8,
                 pending_timeout=100, pending_backoff=50, boot_timeout=30, lost_after=10)
NOW = 10_000.0


def tq(waiting, **req):
    return TaskQueue(1, Requirements(**{"memory_mb": 256, "max_runtime": 600, **req}),
                     "alice", "g", 0, waiting)


def pilot(n, state=M.BOOTING, job_state=BatchState.PENDING, busy=0, submitted=NOW - 5,
          last_seen=NOW, **job):
    name = f"hpc-{n:04d}"
    view = MachineView(name, "hpc", state, NOW - 10, 1, busy, last_seen=last_seen)
    bj = None if job_state is None else BatchJob(str(100 + n), name, job_state,
                                                  job.pop("detail", job_state.value.upper()),
                                                  **job)
    return PilotJob(view, str(100 + n), submitted, bj)


def decide(queues, pilots, **kw):
    kw.setdefault("seen_at", NOW - 1)
    last_seq = max((int(p.machine.name[-4:]) for p in pilots), default=0)
    return decide_batch(SPEC, queues, pilots, NOW, last_seq, **kw)


def test_submits_for_waiting_work_minus_pilots_on_their_way_capped_by_max_queued():
    assert decide([tq(3)], []).decision.start == ("hpc-0001", "hpc-0002")  # max_queued 2
    d = decide([tq(3)], [pilot(1)]).decision  # one pending already
    assert d.start == ("hpc-0002",)
    running = [pilot(i, M.RUNNING, BatchState.RUNNING, busy=1) for i in (1, 2, 3, 4)]
    d = decide([tq(10)], running).decision
    assert d.start == ("hpc-0005", "hpc-0006")  # 6 - 4 live, and max_queued 2
    assert "max_queued leaves 2" in d.reasons[0]
    assert decide([], []).decision.start == ()


def test_a_job_longer_than_the_wall_time_leaves_asks_for_no_pilot_and_says_why():
    d = decide([tq(2, max_runtime=7200)], []).decision
    assert d.start == ()
    assert "needs 7200s of run time, hpc allows 3540s" in d.reasons[0]
    assert "hpc allows 3540s" in (unmatchable_reason(Requirements(max_runtime=7200), [SHAPE])
                                 or "")


def test_a_pilot_pending_too_long_is_cancelled_and_submissions_are_held():
    d = decide([tq(3)], [pilot(1, submitted=NOW - 200)])
    assert d.cancel == ("hpc-0001",)
    assert d.decision.remove[0].to == M.STOPPING
    assert d.decision.start == ()
    assert d.hold_until == NOW + 50
    later = decide_batch(SPEC, [tq(3)], [], NOW + 60, 1, seen_at=NOW + 59,
                         hold_until=d.hold_until)
    assert later.decision.start == ("hpc-0002", "hpc-0003")


def test_pilot_jobs_that_ended_are_gone_and_the_sites_interruptions_use_no_retry():
    pilots = [pilot(1, M.RUNNING, BatchState.ENDED, busy=1, by_site=True, detail="CANCELLED"),
              pilot(2, M.RUNNING, BatchState.ENDED, detail="COMPLETED"),
              pilot(3, M.BOOTING, BatchState.ENDED, failed=True, detail="FAILED"),
              pilot(4, M.RUNNING, BatchState.ENDED, busy=1, detail="COMPLETED")]
    d = decide([], pilots)
    assert {r.name: r.to for r in d.decision.remove} == {
        "hpc-0001": M.LOST, "hpc-0002": M.STOPPED, "hpc-0003": M.FAILED,
        "hpc-0004": M.LOST}
    assert d.interrupted == ("hpc-0001",)  # the site cancelled it: its job is interrupted
    assert "batch job 101 ended: CANCELLED" in d.decision.remove[0].reason


def test_a_job_not_reported_counts_as_gone_only_once_asked_after_its_submission():
    p = pilot(1, M.RUNNING, None, submitted=NOW - 5)
    assert decide([], [p], seen_at=NOW - 10).decision.remove == ()
    assert decide([], [p], seen_at=NOW - 1).decision.remove[0].to == M.STOPPED


def test_no_pilot_after_boot_timeout_or_a_silent_pilot_is_cancelled():
    stuck = pilot(1, M.BOOTING, BatchState.RUNNING, started_at=NOW - 40)
    silent = pilot(2, M.RUNNING, BatchState.RUNNING, last_seen=NOW - 20)
    d = decide([], [stuck, silent])
    assert {r.name: r.to for r in d.decision.remove} == {"hpc-0001": M.FAILED,
                                                         "hpc-0002": M.LOST}
    assert d.cancel == ("hpc-0001", "hpc-0002")


def test_taken_down_cancels_every_pilot_and_submits_none():
    d = decide([tq(5)], [pilot(1), pilot(2, M.RUNNING, BatchState.RUNNING)], down_by="ops")
    assert d.cancel == ("hpc-0001", "hpc-0002")
    assert d.decision.start == ()


def test_squeue_lines_become_pilot_jobs_of_this_endpoint_only():
    out = "\n".join(["12|cp-hpc-0001|RUNNING|None|n1", "13|cp-hpc-0002|PENDING|Resources|",
                     "14|cp-hpc-0003|CANCELLED|None|n1", "15|cp-other-0001|RUNNING|None|n1",
                     "16|myjob|RUNNING|None|n2", "17|cp-hpc-0004|TIMEOUT|TimeLimit|n1",
                     "18|cp-hpc-0005|FAILED|NonZeroExitCode|n1"])
    jobs = {j.machine: j for j in parse_squeue(out, "hpc")}
    assert set(jobs) == {"hpc-0001", "hpc-0002", "hpc-0003", "hpc-0004", "hpc-0005"}
    assert jobs["hpc-0001"].state == BatchState.RUNNING and jobs["hpc-0001"].node == "n1"
    assert jobs["hpc-0002"].state == BatchState.PENDING
    assert jobs["hpc-0002"].detail == "PENDING (Resources)"
    assert jobs["hpc-0003"].by_site and jobs["hpc-0004"].by_site
    assert jobs["hpc-0005"].failed and not jobs["hpc-0005"].by_site


def test_remote_dir_under_home_stays_a_shell_word():
    assert remote_base("~/.cloudpilot", "hpc") == '"$HOME"/.cloudpilot/hpc'
    assert remote_base("/scratch/cp/", "hpc") == "/scratch/cp/hpc"


def _slurm(**over):
    return {"address": "login.example.org", "user": "cp", "key": "/k", **over}


def test_slurm_settings_are_checked():
    ep = endpoint_config(name="hpc", driver="slurm", slurm=_slurm(wall_time=3600,
                                                               time_margin=60))
    assert ep.shape().max_runtime == 3540
    assert ep.auto_apply is True
    with pytest.raises(ConfigError, match=r"needs an \[endpoints.slurm\] section"):
        endpoint_config(name="hpc", driver="slurm")
    with pytest.raises(ConfigError, match="driver 'local' has no option slurm"):
        endpoint_config(name="hpc", driver="local", slurm=_slurm())
    with pytest.raises(ConfigError, match="sbatch option"):
        endpoint_config(name="hpc", driver="slurm", slurm=_slurm(sbatch_options=["--x=$(id)"]))
    with pytest.raises(ConfigError):
        endpoint_config(name="hpc", driver="slurm", slurm=_slurm(partition="a b"))


def test_the_example_config_loads():
    from pathlib import Path

    from controller.config.settings import Settings

    example = Path(__file__).resolve().parents[2] / "examples" / "slurm.toml"
    try:
        s = Settings.load(example)
    except ConfigError as e:  # pragma: no cover - the message says what is wrong
        raise AssertionError(str(e)) from None
    ep = next(e for e in s.endpoints if e.driver == "slurm")
    assert ep.slurm is not None and ep.slurm.partition


def test_jobs_of_a_pilot_job_the_site_took_away_go_back_using_no_retry(database):
    from controller.domain.jobs import NewJob
    from controller.store import Store

    store = Store(database)
    try:
        store.endpoints.sync([{"name": "hpc", "driver": "slurm"}])
        store.machines.create("hpc-0001", "hpc", 1, "test", NOW)
        store.machines.register_pilot("p1", "hpc", "hpc-0001", 1, 1024, [], 1, "test")
        [job_id] = store.jobs.submit([NewJob("/bin/true")], "alice", "g", 3)
        got = store.jobs.match("p1", "hpc-0001", SlotOffer("hpc", 1, 1024), by="owner",
                               shares={}).jobs
        assert [j.id for j, _ in got] == [job_id]
        assert store.jobs.interrupt("hpc-0001", "pilot job ended by the site") == [job_id]
        job = store.jobs.get(job_id)
        assert job.state.value == "waiting" and job.retries == 0
        assert "pilot job ended by the site" in [e["reason"] for e in store.jobs.events(job_id)]
        assert store.jobs.interrupt("hpc-0001", "again") == []  # nothing held any more
    finally:
        store.close()
