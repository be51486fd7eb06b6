"""Run-time prediction (domain/runtime_prediction.py): the mean of the last two real run
times, capped by the request; a running job past its prediction gets a new one."""

from controller.domain.runtime_prediction import RunHistory, extend, predict


def test_no_history_predicts_the_request():
    assert predict([], 3600.0) == 3600.0
    assert RunHistory().predict("q", "alice", 7200.0) == 7200.0


def test_the_mean_of_the_last_two_capped_by_the_request():
    assert predict([100.0], 3600.0) == 100.0
    assert predict([5000.0, 100.0, 300.0], 3600.0) == 200.0  # only the last two count
    assert predict([5000.0, 7000.0], 3600.0) == 3600.0  # never above the request
    assert predict([0.0, 0.0], 3600.0) == 1.0  # nor below a second


def test_the_task_queue_first_then_the_owner():
    h = RunHistory()
    h.record("q1", "alice", 100.0)
    h.record("q1", "alice", 300.0)
    h.record("q2", "alice", 1000.0)
    assert h.predict("q1", "alice", 3600.0) == 200.0  # its own queue's last two
    assert h.predict("q2", "alice", 3600.0) == 1000.0
    assert h.predict("q3", "alice", 3600.0) == 650.0  # a new queue: the owner's last two
    assert h.predict("q3", "alice", 500.0) == 500.0  # capped by that job's request
    assert h.predict("q3", "bob", 3600.0) == 3600.0  # nothing known of bob
    assert h.by_owner["alice"] == (300.0, 1000.0)  # only the last two are kept


def test_a_job_past_its_prediction_gets_a_new_one():
    assert extend(600.0, 300.0, 3600.0) == 600.0  # still within it
    assert extend(600.0, 600.0, 3600.0) == 1200.0  # twice the time run so far
    assert extend(600.0, 2000.0, 3600.0) == 3600.0  # never above the request


def test_the_scheduler_is_told_the_prediction_of_each_task_queue():
    from controller.domain.jobs import Requirements
    from controller.domain.runtime_prediction import with_prediction
    from controller.domain.taskqueues import TaskQueue

    h = RunHistory()
    h.record(7, "alice", 40.0)
    short = TaskQueue(7, Requirements(max_runtime=3600), "alice", "g", 0, waiting=3)
    other = TaskQueue(8, Requirements(max_runtime=3600), "alice", "g", 0)
    unknown = TaskQueue(9, Requirements(max_runtime=600), "bob", "g", 0)
    assert with_prediction(short, h).runtime == 40.0  # its queue's history
    assert with_prediction(short, h).waiting == 3  # nothing else changes
    assert with_prediction(other, h).runtime == 40.0  # its owner's
    assert with_prediction(unknown, h).runtime == 600.0  # no history: the request


def test_a_machine_is_busy_until_its_jobs_predicted_ends():
    from controller.domain.runtime_prediction import HeldJob, predicted_ends

    h = RunHistory()
    h.record(1, "alice", 100.0)
    jobs = [HeldJob("m1", 1, "alice", 1000.0, 3600.0),  # predicted 100 s: ends at 1,100
            HeldJob("m1", 1, "alice", 1050.0, 3600.0),  # ends at 1,150
            HeldJob("m2", 2, "bob", 1000.0, 600.0),  # no history: its max_runtime
            HeldJob("m3", 1, "alice", 800.0, 3600.0)]  # past its prediction: 2 x 250 s run
    assert predicted_ends(jobs, h, 1050.0) == {"m1": 1150.0, "m2": 1600.0, "m3": 1300.0}


def test_the_matcher_is_handed_the_ticks_predictions_by_task_queue():
    from controller.domain.jobs import Requirements
    from controller.domain.runtime_prediction import HeldJob, Predicted, predicted, with_prediction
    from controller.domain.taskqueues import TaskQueue

    h = RunHistory()
    h.record(7, "alice", 40.0)
    h.record(5, "carol", 300.0)
    waiting = with_prediction(TaskQueue(7, Requirements(max_runtime=3600), "alice", "g", 0), h)
    held = [HeldJob("m1", 5, "carol", 1000.0, 3600.0),  # a queue with no waiting work
            HeldJob("m1", 7, "alice", 1000.0, 3600.0)]
    p = predicted([waiting], held, h)
    assert p.runtimes == {7: 40.0, 5: 300.0}
    # a waiting queue as the matcher walks it: with its prediction (never above its request)
    plain = TaskQueue(7, Requirements(max_runtime=20), "alice", "g", 0)
    assert p.queue(plain).runtime == 20.0
    assert p.queue(TaskQueue(9, Requirements(max_runtime=600), "bob", "g", 0)).runtime == 600
    # a running job's end: its prediction, a new one once outlived, else its request
    assert p.ends(5, 1000.0, 3600.0, now=1100.0) == 1300.0
    assert p.ends(5, 1000.0, 3600.0, now=1400.0) == 1800.0  # ran 400 s: twice that
    assert p.ends(9, 1000.0, 3600.0, now=1100.0) == 4600.0
    assert Predicted().ends(None, 1000.0, 60.0, now=1000.0) == 1060.0
