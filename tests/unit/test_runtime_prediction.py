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
