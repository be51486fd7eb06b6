import json

import pytest

from pilot.config import PilotConfig


def test_from_environment(monkeypatch):
    monkeypatch.setenv("CLOUDPILOT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CLOUDPILOT_PILOT_TOKEN", "cp_x")
    monkeypatch.setenv("CLOUDPILOT_SLOTS", "3")
    monkeypatch.setenv("CLOUDPILOT_TAGS", "linux,el9")
    monkeypatch.setenv("CLOUDPILOT_IDLE_TIMEOUT", "12.5")
    c = PilotConfig.load()
    assert (c.controller_url, c.token, c.slots, c.tags, c.idle_timeout) == (
        "http://127.0.0.1:9", "cp_x", 3, ["linux", "el9"], 12.5)


def test_file_wins_over_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDPILOT_SLOTS", "3")
    p = tmp_path / "pilot.json"
    p.write_text(json.dumps({"controller_url": "http://127.0.0.1:9", "token": "t", "slots": 5}))
    assert PilotConfig.load(str(p)).slots == 5
    t = tmp_path / "pilot.toml"
    t.write_text('controller_url = "http://127.0.0.1:9"\ntoken = "t"\nmachine = "vm-1"\n')
    assert PilotConfig.load(str(t)).machine == "vm-1"


def test_missing_and_unknown_settings_are_refused(tmp_path, monkeypatch):
    for var in ("CLOUDPILOT_URL", "CLOUDPILOT_PILOT_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="needs controller_url"):
        PilotConfig.load()
    p = tmp_path / "pilot.json"
    p.write_text(json.dumps({"controller_url": "u", "token": "t", "slot": 2}))
    with pytest.raises(ValueError, match=r"unknown pilot settings: \['slot'\]"):
        PilotConfig.load(str(p))
