"""Cloud endpoint settings: the examples load, and a wrong cloud section is a clear error."""

from pathlib import Path

import pytest

from controller.config.settings import Settings
from controller.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_cloud_examples_load():
    aws = Settings.load(REPO / "examples" / "aws.toml")
    ep = aws.endpoint("aws-spot")
    assert ep is not None and ep.aws is not None and ep.aws.spot
    assert ep.auto_apply is False and ep.auto_apply_max_new == 2
    assert ep.machine_cost_per_hour() == 0.04
    assert aws.endpoint("local").auto_apply is True
    os_ = Settings.load(REPO / "examples" / "openstack.toml")
    assert os_.endpoints[0].openstack.flavor == "m1.large"


def load(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return Settings.load(p)


AWS = '[endpoints.aws]\nregion = "eu-west-1"\nami = "ami-0abc"\n'


@pytest.mark.parametrize("text,msg", [
    ('[[endpoints]]\nname = "c"\ndriver = "aws"\n', "driver 'aws' needs an [endpoints.aws]"),
    ('[[endpoints]]\nname = "c"\n' + AWS,
     "endpoints.0.aws: driver 'local' has no option aws (drivers with it: aws)"),
    ('[[endpoints]]\nname = "c"\ndriver = "gce"\n', "endpoints.0.driver"),
    ('[[endpoints]]\nname = "c"\ndriver = "aws"\n' + AWS + 'instanz_type = "x"\n',
     "endpoints.0.aws.instanz_type"),
    ('[[endpoints]]\nname = "c"\ndriver = "aws"\n' + AWS + 'spot_max_price = 0.1\n',
     "spot_max_price needs spot = true"),
    ('[[endpoints]]\nname = "c"\ndriver = "aws"\n' + AWS, "set public_url"),
    ('public_url = "http://h:1"\n[[endpoints]]\nname = "c"\ndriver = "aws"\n'
     'contextualization = "ssh"\n' + AWS, "needs a public_key"),
    ('public_url = "http://h:1"\n[[endpoints]]\nname = "c"\ndriver = "aws"\n'
     'contextualization = "ssh"\nssh_endpoint = "h"\n' + AWS + 'public_key = "ssh-ed25519 A"\n'
     'ssh_cidr = "10.0.0.0/8"\n', "ssh_endpoint 'h' is not an endpoint with driver 'ssh'"),
    ('[[endpoints]]\nname = "c"\nauto_apply_max_new = -1\n', "auto_apply_max_new"),
])
def test_bad_cloud_settings_are_named(tmp_path, text, msg):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert msg in str(e.value)


def test_ssh_mode_pairs_with_an_ssh_endpoint(tmp_path):
    s = load(tmp_path, '[[endpoints]]\nname = "hosts"\ndriver = "ssh"\n'
                       '[endpoints.ssh]\nuser = "ops"\nkey = "id_ed25519"\n'
                       '[[endpoints]]\nname = "c"\ndriver = "aws"\ncontextualization = "ssh"\n'
                       'ssh_endpoint = "hosts"\n' + AWS + 'public_key = "ssh-ed25519 AAAA k"\n'
                       'ssh_cidr = "10.0.0.5/32"\n')
    c = s.endpoint("c")
    assert c is not None and c.ssh_endpoint == "hosts" and c.auto_apply is False
