"""Grid Engine's adapter (controller/drivers/sge.py) without a cluster: its settings, the qsub
options it builds, and how qstat's XML and accounting lines become pilot jobs. Also batch
ticks as recorded for explain and replay. The real cluster: tests/integration/test_sge.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config.settings import Settings, endpoint_config
from controller.domain import ticks
from controller.domain.batch import BatchJob, BatchState, PilotJob
from controller.domain.jobs import Requirements
from controller.domain.machines import MachineState as M
from controller.domain.machines import MachineView
from controller.domain.taskqueues import TaskQueue
from controller.drivers.sge import GridEngine, _job_id, parse_accounting, parse_qstat
from controller.errors import ConfigError

QSTAT = """<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>4</JB_job_number><JB_name>cp-hpc-0001</JB_name><state>r</state>
      <queue_name>all.q@node7</queue_name><slots>2</slots>
    </job_list>
    <job_list state="running">
      <JB_job_number>9</JB_job_number><JB_name>myjob</JB_name><state>r</state>
      <queue_name>all.q@node7</queue_name><slots>1</slots>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>8</JB_job_number><JB_name>cp-hpc-0002</JB_name><state>hqw</state>
      <queue_name></queue_name><slots>2</slots>
    </job_list>
    <job_list state="pending">
      <JB_job_number>10</JB_job_number><JB_name>cp-other-0001</JB_name><state>qw</state>
    </job_list>
  </job_info>
</job_info>
"""
ACCOUNTING = "\n".join([
    "all.q:node7:cp:cp:cp-hpc-0003:5:sge:0:1:2:3:0:0:4",  # ended on its own
    "all.q:node7:cp:cp:cp-hpc-0004:6:sge:0:1:2:3:100:137:4",  # qdel by the site
    "all.q:node7:cp:cp:cp-hpc-0005:7:sge:0:1:2:3:37:137:4",  # h_rt
    "all.q:node7:cp:cp:cp-hpc-0006:11:sge:0:1:2:3:0:1:4",  # the pilot failed
    "all.q:node7:cp:cp:cp-hpc-0007:12:sge:0:1:2:3:1:0:4",  # could not start
    "all.q:node7:cp:cp:cp-other-0001:13:sge:0:1:2:3:0:0:4"])


def _sge(**over):
    return {"address": "login.example.org", "user": "cp", "key": "/k", **over}


def test_qstat_xml_and_accounting_become_pilot_jobs_of_this_endpoint_only():
    jobs = {j.machine: j for j in parse_qstat(QSTAT, "hpc") + parse_accounting(ACCOUNTING,
                                                                                "hpc")}
    assert set(jobs) == {f"hpc-000{i}" for i in range(1, 8)}
    running, pending = jobs["hpc-0001"], jobs["hpc-0002"]
    assert running.state == BatchState.RUNNING and running.node == "node7"
    assert running.id == "4" and running.detail == "r in all.q@node7"
    assert pending.state == BatchState.PENDING and pending.detail == "hqw" and not pending.node
    ended = [jobs[f"hpc-000{i}"] for i in range(3, 8)]
    assert all(j.state == BatchState.ENDED for j in ended)
    assert [j.by_site for j in ended] == [False, True, True, False, False]
    assert [j.failed for j in ended] == [False, False, False, True, True]
    assert "h_rt" in jobs["hpc-0005"].detail and "qdel" in jobs["hpc-0004"].detail
    assert parse_qstat("", "hpc") == []
    with pytest.raises(Exception, match="unreadable"):
        parse_qstat("<job_info", "hpc")


def test_qsub_answers_give_the_job_id():
    assert _job_id("42") == "42"
    assert _job_id("warning: no suitable queues 43") == "43"
    assert _job_id('Your job 44 ("cp-hpc-0001") has been submitted') == "44"
    assert _job_id("Unable to run job: unknown queue") is None


def test_sge_settings_and_the_qsub_options_they_make():
    ep = endpoint_config(name="hpc", driver="sge", cores=4, memory_mb=8192, sge=_sge(
        wall_time=3600, time_margin=60, queue="all.q", project="phys",
        memory_resource="h_vmem", qsub_options=["-l arch=lx-amd64", "-h"]))
    assert ep.shape().max_runtime == 3540 and ep.batch is ep.sge
    opts = GridEngine(ep).qsub_options()
    assert " ".join(opts).endswith("-pe smp 4 -l h_vmem=2048M -q all.q -P phys -l "
                                   "arch=lx-amd64 -h")
    assert "h_rt=3600" in opts and "-terse" in opts
    one = endpoint_config(name="hpc", driver="sge", cores=1, sge=_sge())
    assert "-pe" not in GridEngine(one).qsub_options()
    with pytest.raises(ConfigError, match=r"needs an \[endpoints.sge\] section"):
        endpoint_config(name="hpc", driver="sge")
    with pytest.raises(ConfigError, match="driver 'slurm' has no option sge"):
        endpoint_config(name="hpc", driver="slurm", slurm=_sge(), sge=_sge())
    with pytest.raises(ConfigError, match="qsub option"):
        endpoint_config(name="hpc", driver="sge", sge=_sge(qsub_options=["-l $(id)"]))
    with pytest.raises(ConfigError):
        endpoint_config(name="hpc", driver="sge", sge=_sge(queue="a b"))


def test_the_example_config_loads():
    example = Path(__file__).resolve().parents[2] / "examples" / "sge.toml"
    ep = next(e for e in Settings.load(example).endpoints if e.driver == "sge")
    assert ep.sge is not None and ep.sge.queue == "all.q"


def test_a_batch_tick_round_trips_and_replays_to_the_same_decision(tmp_path):
    ep = endpoint_config(name="hpc", driver="sge", cores=1, memory_mb=256, slots=1,
                        max_starts_per_cycle=8, sge=_sge(max_queued=2))
    view = MachineView("hpc-0001", "hpc", M.RUNNING, 100.0, 1, busy_slots=1, last_seen=195.0)
    gone = BatchJob("7", "hpc-0001", BatchState.ENDED, "failed 100", by_site=True)
    q = TaskQueue(1, Requirements(cores=1, memory_mb=128, max_runtime=600), "alice", "users",
                  0, 5)
    inputs = ticks.BatchTickInputs(ep.batch_spec(), (q,), (PilotJob(view, "7", 90.0, gone),),
                                   200.0, 1, 199.0)
    recorded = ticks.decision_to_dict(inputs.decide())
    assert recorded["start"] == ["hpc-0002", "hpc-0003"]  # max_queued
    assert recorded["remove"][0]["to"] == "lost"
    again = ticks.decode(ticks.encode_batch(inputs))
    assert again == inputs
    assert ticks.differences(recorded, ticks.decision_to_dict(again.decide())) == []
    wider = ep.model_copy(update={"sge": ep.sge.model_copy(update={"max_queued": 4})})
    diff = ticks.differences(recorded, ticks.decision_to_dict(
        again.decide(wider.batch_spec())))
    assert diff[0] == "start machine: 2 -> 4"

    # `cloudpilot replay --config`: the other file's batch settings
    from controller.reconcile.whatif import replay

    (tmp_path / "wider.toml").write_text(
        '[[endpoints]]\nname = "hpc"\ndriver = "sge"\ncores = 1\nmemory_mb = 256\nslots = 1\n'
        'max_starts_per_cycle = 8\n[endpoints.sge]\naddress = "login"\nuser = "cp"\n'
        'key = "/k"\nmax_queued = 4\n')
    tick = {"id": 7, "endpoint": "hpc", "inputs": ticks.encode_batch(inputs),
            "decision": recorded}
    assert "the same decision" in replay(tick)
    out = replay(tick, tmp_path / "wider.toml")
    assert "start machine: 2 -> 4" in out, out
