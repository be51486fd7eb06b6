"""Pure pieces of the monitoring: machine costs, the event cursor, chart scaling, SSE parsing."""

from __future__ import annotations

import pytest

from controller.cli.sse import parse
from controller.domain.costs import MachineLife, spend_rate, spent
from controller.errors import InvalidInput
from controller.store.views import Cursor
from controller.web.render import Chart, chart, duration, usd

HOUR = 3600.0


def test_machine_costs_over_its_life_and_since_a_time() -> None:
    alive = MachineLife("aws", 0.5, started=0.0, ended=None)
    gone = MachineLife("aws", 2.0, started=0.0, ended=HOUR)
    free = MachineLife("local", 0.0, started=0.0, ended=None)
    assert alive.cost(now=2 * HOUR) == pytest.approx(1.0)
    assert gone.cost(now=3 * HOUR) == pytest.approx(2.0)  # stopped after an hour
    assert gone.cost(now=3 * HOUR, since=HOUR / 2) == pytest.approx(1.0)  # "today"
    assert gone.cost(now=3 * HOUR, since=2 * HOUR) == 0.0
    assert spend_rate([alive, gone, free]) == {"aws": 0.5, "local": 0.0}
    assert spent([alive, gone, free], now=2 * HOUR) == {"aws": pytest.approx(3.0),
                                                         "local": 0.0}


def test_the_event_cursor_round_trips_and_refuses_garbage() -> None:
    c = Cursor(12, 3, 0, 7, 1)
    assert str(c) == "12.3.0.7.1" and Cursor.parse(str(c)) == c
    assert c.moved("plan", 5) == Cursor(12, 3, 5, 7, 1)
    assert c.moved("job", 4) == c  # never backwards
    for bad in ("", "1.2.3.4", "1.2.3.4.x", "1.2.3.4.5.6", "-1.0.0.0.0", "9" * 30 + ".0.0.0.0"):
        with pytest.raises(InvalidInput):
            Cursor.parse(bad)


def test_a_chart_fits_its_box() -> None:
    c = chart("waiting", [(0.0, 0.0), (50.0, 10.0), (100.0, 5.0)], 0.0, 100.0)
    xs = [float(p.split(",")[0]) for p in c.points.split()]
    ys = [float(p.split(",")[1]) for p in c.points.split()]
    assert xs == [0.0, Chart.WIDTH / 2, Chart.WIDTH]
    assert ys[0] == Chart.HEIGHT and min(ys) == 4.0  # the peak touches the top margin
    assert (c.top, c.last) == (10.0, 5.0)
    assert chart("empty", [], 0.0, 1.0).points == ""
    assert (duration(59), duration(125), duration(7300)) == ("59s", "2m 05s", "2h 01m")
    assert (usd(0.0123), usd(12.5), usd(None)) == ("$0.0123", "$12.50", "-")


def test_server_sent_events_are_parsed_as_sent() -> None:
    stream = ["retry: 1000", ": a comment", "", "id: 1.0.0.0.0", "event: job",
              'data: {"a": 1}', "", "data: two", "data: lines", ""]
    got = list(parse(stream))
    assert [(e.id, e.event, e.data) for e in got] == [
        ("1.0.0.0.0", "job", '{"a": 1}'), ("1.0.0.0.0", "message", "two\nlines")]
    assert got[0].json() == {"a": 1}
