import argparse
from pathlib import Path

import pytest

from controller.cli.main import build_parser
from controller.config.settings import Settings
from controller.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_example_config_loads():
    s = Settings.load(REPO / "examples" / "cloudpilot.toml")
    assert s.endpoints[0].driver == "local"
    assert s.database.is_absolute()


def test_bad_config_is_a_clear_error(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("port = 'x'\n[[endpoints]]\nname = 'a'\ncores = -1\n")
    with pytest.raises(ConfigError) as e:
        Settings.load(p)
    assert "port" in str(e.value) and "endpoints.0.cores" in str(e.value)
    p.write_text("[[endpoints]]\nname = 'a'\n[[endpoints]]\nname = 'a'\n")
    with pytest.raises(ConfigError, match="unique"):
        Settings.load(p)
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(tmp_path / "nope.toml")


def test_embedded_default_has_a_local_endpoint():
    assert [e.driver for e in Settings().endpoints] == ["local"]


def _walk(parser: argparse.ArgumentParser, path: str = "cloudpilot"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield f"{path} {choice.dest}", choice.help
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action.help


def test_every_command_and_option_has_help():
    items = list(_walk(build_parser()))
    assert len(items) > 40
    missing = [name for name, help_ in items if not help_]
    assert missing == []


def test_environment_variables_override_the_file(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('port = 9000\nhost = "127.0.0.2"\nloop_interval = 5.0\n')
    monkeypatch.setenv("CLOUDPILOT_PORT", "7777")
    monkeypatch.setenv("CLOUDPILOT_LOOP_INTERVAL", "0.5")
    s = Settings.load(cfg)
    assert (s.port, s.loop_interval, s.host) == (7777, 0.5, "127.0.0.2")
    assert Settings.load(cfg, port=1234).port == 1234  # explicit overrides win over both
    monkeypatch.setenv("CLOUDPILOT_PORT", "not a port")
    with pytest.raises(ConfigError, match="port"):
        Settings.load(cfg)


def test_a_renamed_setting_is_still_read_under_its_old_name_with_a_warning(tmp_path,
                                                                           monkeypatch):
    (tmp_path / "c.toml").write_text("stalled_after = 42\n")
    with pytest.warns(FutureWarning, match="stalled_after is now called lease"):
        assert Settings.load(tmp_path / "c.toml").lease == 42
    monkeypatch.setenv("CLOUDPILOT_STALLED_AFTER", "43")
    with pytest.warns(FutureWarning, match="CLOUDPILOT_STALLED_AFTER is now called "
                      "CLOUDPILOT_LEASE"):
        assert Settings.load(None).lease == 43
    with pytest.warns(FutureWarning):
        assert Settings.load(None, lease=44).lease == 44  # the new name wins


def test_each_kind_of_endpoint_has_only_its_own_options(tmp_path, monkeypatch):
    p = tmp_path / "c.toml"
    p.write_text('[[endpoints]]\nname = "h"\ndriver = "ssh"\ndrain_below = 0.5\nfoo = 1\n'
                 '[endpoints.ssh]\nuser = "ops"\nkey = "k"\n')
    with pytest.raises(ConfigError) as e:
        Settings.load(p)
    assert str(e.value).splitlines()[1:] == [
        "  endpoints.0.drain_below: driver 'ssh' has no option drain_below (drivers with it: "
        "local, aws, openstack)",
        "  endpoints.0.foo: driver 'ssh' has no option foo"]
    p.write_text('[[endpoints]]\nname = "a"\ndriver = "gce"\n')
    with pytest.raises(ConfigError, match=r"endpoints\.0\.driver: Value error, unknown "
                       "driver 'gce'"):
        Settings.load(p)
    # the environment holds endpoints as JSON, each the model of its kind
    monkeypatch.setenv("CLOUDPILOT_ENDPOINTS", '[{"name": "b", "driver": "local", '
                       '"via": "pulumi"}, {"name": "h", "driver": "ssh", '
                       '"ssh": {"user": "ops", "key": "/k"}}]')
    s = Settings.load(None)
    assert [type(e).__name__ for e in s.endpoints] == ["LocalEndpointConfig",
                                                       "SshEndpointConfig"]
    assert s.endpoints[1].auto_apply is True and s.endpoints[0].via == "pulumi"
