"""The Pulumi driver's own code paths that need no `pulumi` CLI: stack naming, config mapping,
a preview result as a plan, stack outputs and state as machines, error lines, and the clear
error when the CLI is missing (the real Automation API call, on a PATH without `pulumi`)."""


import json

import pytest

from controller.config.settings import endpoint_config
from controller.drivers.contextualization import pilot_settings_from
from controller.drivers.pulumi import (
    PulumiDriver,
    Step,
    error_line,
    local_stack_config,
    machines_from_outputs,
    machines_in_state,
    missing_cli_message,
    plan_from_preview,
    stack_config,
    stack_name,
)
from controller.errors import ConfigError, DriverSetupError
from tests.conftest import path_without

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhGk2c3cl2hSAFA0xD8i8T1QqBJ8GiqNcXd cloudpilot@ctl"
AWS = endpoint_config(name="aws-spot", driver="aws", aws={
    "region": "eu-west-1", "ami": "ami-0abc", "instance_type": "c6a.large", "spot": True,
    "spot_max_price": 0.035, "subnet_id": "subnet-1", "public_key": KEY,
    "tags": {"team": "physics"}})
OPENSTACK = endpoint_config(name="os", driver="openstack", openstack={
    "cloud": "mycloud", "region": "RegionOne", "flavor": "m1.large", "image": "debian-12",
    "network": "private", "floating_ip_pool": "public", "key_name": "ops"})
INSTANCE = "aws:ec2/instance:Instance"


def test_one_stack_per_endpoint_named_after_it():
    names = ["local", "aws-spot", "a", "os-" + "x" * 38]
    assert [stack_name(n) for n in names] == names
    assert len({stack_name(n) for n in names}) == len(names)
    with pytest.raises(DriverSetupError):
        stack_name("no spaces allowed")


def test_aws_config_mapping():
    cfg = stack_config(AWS, ["aws-spot-0002", "aws-spot-0001", "aws-spot-0002"])
    assert cfg == {
        "cloudpilot:cloud": "aws", "cloudpilot:endpoint": "aws-spot",
        "cloudpilot:machines": '["aws-spot-0001", "aws-spot-0002"]',
        "cloudpilot:contextualization": "pilot", "cloudpilot:publicKey": KEY,
        "cloudpilot:tags": '{"team": "physics"}', "aws:region": "eu-west-1",
        "cloudpilot:ami": "ami-0abc", "cloudpilot:instanceType": "c6a.large",
        "cloudpilot:subnetId": "subnet-1", "cloudpilot:spot": "true",
        "cloudpilot:spotMaxPrice": "0.035",
    }
    assert not any("token" in v or "userData" in k for k, v in cfg.items())


def test_priced_machines_config_mapping():
    specs = {"aws-spot-0003": {"type": "c5.xlarge", "zone": "eu-west-1a", "market": "spot",
                               "price": 0.07, "cores": 4, "memory_mb": 8192, "slots": 4},
             "aws-spot-0004": {"type": "m5.large", "zone": "eu-west-1b",
                               "market": "on-demand"}}
    cfg = stack_config(AWS, ["aws-spot-0003", "aws-spot-0004"], specs)
    assert json.loads(cfg["cloudpilot:machineSpecs"]) == {
        "aws-spot-0003": {"instanceType": "c5.xlarge", "availabilityZone": "eu-west-1a",
                          "spot": True},
        "aws-spot-0004": {"instanceType": "m5.large", "availabilityZone": "eu-west-1b",
                          "spot": False}}
    assert "cloudpilot:machineSpecs" not in stack_config(AWS, ["aws-spot-0003"])
    os_cfg = stack_config(OPENSTACK, ["os-0001"], {"os-0001": {"type": "m1.xlarge"}})
    assert json.loads(os_cfg["cloudpilot:machineSpecs"]) == {"os-0001": {"flavor": "m1.xlarge"}}


def test_openstack_config_mapping():
    cfg = stack_config(OPENSTACK, [])
    assert cfg == {
        "cloudpilot:cloud": "openstack", "cloudpilot:endpoint": "os",
        "cloudpilot:machines": "[]", "cloudpilot:contextualization": "pilot",
        "cloudpilot:keyName": "ops", "openstack:cloud": "mycloud",
        "openstack:region": "RegionOne", "cloudpilot:flavor": "m1.large",
        "cloudpilot:image": "debian-12", "cloudpilot:network": "private",
        "cloudpilot:floatingIpPool": "public",
    }


def urn(type_, name):
    return f"urn:pulumi:aws-spot::cloudpilot::{type_}::{name}"


def test_a_preview_becomes_a_plan_naming_the_machines():
    steps = [Step.from_urn("same", "aws:ec2/securityGroup:SecurityGroup",
                           urn("aws:ec2/securityGroup:SecurityGroup", "aws-spot-sg")),
             Step.from_urn("same", INSTANCE, urn(INSTANCE, "aws-spot-0001")),
             Step.from_urn("delete", INSTANCE, urn(INSTANCE, "aws-spot-0002")),
             Step.from_urn("create", INSTANCE, urn(INSTANCE, "aws-spot-0003")),
             Step.from_urn("create", INSTANCE, urn(INSTANCE, "aws-spot-0004"))]
    diff = plan_from_preview("aws", "aws-spot", ["aws-spot-0001", "aws-spot-0002"],
                             ["aws-spot-0001", "aws-spot-0003", "aws-spot-0004"], steps,
                             {"same": 2, "create": 2, "delete": 1})
    assert diff.create == ("aws-spot-0003", "aws-spot-0004")
    assert diff.delete == ("aws-spot-0002",)
    assert diff.wanted == ("aws-spot-0001", "aws-spot-0003", "aws-spot-0004")
    assert diff.detail.splitlines() == [
        "preview of stack aws-spot: 2 to create, 1 to delete, 2 unchanged",
        f"  - {INSTANCE} aws-spot-0002",
        f"  + {INSTANCE} aws-spot-0003",
        f"  + {INSTANCE} aws-spot-0004",
    ]


def test_a_preview_that_disagrees_with_the_controller_says_so():
    # the stack would also create aws-spot-0001: its state lost a machine the controller has
    steps = [Step("create", INSTANCE, "aws-spot-0001"), Step("create", INSTANCE, "aws-spot-0002")]
    diff = plan_from_preview("aws", "aws-spot", ["aws-spot-0001"],
                             ["aws-spot-0001", "aws-spot-0002"], steps, {"create": 2})
    assert diff.create == ("aws-spot-0002",)
    assert diff.detail.endswith("disagrees with the controller about aws-spot-0001")


def test_outputs_and_state_as_machines():
    seen = machines_from_outputs({"machines": {
        "aws-spot-0002": {"id": "i-2", "private_ip": "10.0.0.2", "public_ip": None},
        "aws-spot-0001": {"id": "i-1", "private_ip": "10.0.0.1", "public_ip": "203.0.113.1"}}})
    assert [(m.name, m.alive, m.address) for m in seen] == [
        ("aws-spot-0001", True, "203.0.113.1"), ("aws-spot-0002", True, "10.0.0.2")]
    assert seen[0].detail == "id i-1, private 10.0.0.1"
    assert machines_from_outputs({}) == []
    state = {"resources": [
        {"urn": urn("pulumi:pulumi:Stack", "cloudpilot-aws-spot"), "type": "pulumi:pulumi:Stack"},
        {"urn": urn(INSTANCE, "aws-spot-0001"), "type": INSTANCE, "id": "i-1"},
        {"urn": urn(INSTANCE, "aws-spot-0003"), "type": INSTANCE, "delete": True},
    ]}
    assert machines_in_state("aws", state) == {"aws-spot-0001"}


def test_error_lines_are_the_errors_not_the_whole_output():
    out = ("code: 255\n stdout: Updating (aws-spot):\n  + aws:ec2:Instance aws-spot-0003 "
           "creating (0s) error: 1 error occurred:\n stderr: error: creating EC2 Instance: "
           "operation error EC2: RunInstances, api error VcpuLimitExceeded: You have requested "
           "more vCPU capacity than your current vCPU limit of 32 allows\n"
           "error: update failed\n")
    assert error_line(Exception(out)) == (
        "creating EC2 Instance: operation error EC2: RunInstances, api error "
        "VcpuLimitExceeded: You have requested more vCPU capacity than your current vCPU "
        "limit of 32 allows")
    assert error_line(Exception("plain trouble")) == "plain trouble"


def test_a_missing_cli_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", path_without("pulumi"))
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "test")
    driver = PulumiDriver(AWS, tmp_path, "http://10.0.0.5:8080", lambda m: "cp_token",
                          root=tmp_path / "no-pulumi")  # not the one `make pulumi` built
    for call in (driver.refresh, lambda: driver.plan([], ["aws-spot-0001"]),
                 lambda: driver.apply(driver.plan([], []))):
        with pytest.raises(DriverSetupError) as e:
            call()
        assert str(e.value) == missing_cli_message("aws")
        assert "\n" not in str(e.value)
        assert "pulumi plugin install resource aws" in str(e.value)
        assert "run `make pulumi`" in str(e.value)
    assert not (tmp_path / "pulumi" / "state").exists()  # nothing pretended


def test_a_missing_passphrase_is_named(tmp_path, monkeypatch):
    for var in ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE"):
        monkeypatch.delenv(var, raising=False)
    driver = PulumiDriver(OPENSTACK, tmp_path, "http://10.0.0.5:8080", lambda m: "cp_token")
    with pytest.raises(DriverSetupError, match="set PULUMI_CONFIG_PASSPHRASE"):
        driver.env()
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE_FILE", str(tmp_path / "p"))
    assert driver.env()["PULUMI_BACKEND_URL"] == f"file://{tmp_path}/pulumi/state"


def test_user_data_holds_the_token_for_each_named_machine(tmp_path):
    driver = PulumiDriver(AWS, tmp_path, "http://10.0.0.5:8080", lambda m: "cp_token-abc")
    data = driver.user_data(["aws-spot-0001", "aws-spot-0002"],
                            {"aws-spot-0002": {"cores": 8, "memory_mb": 16000, "slots": 8}})
    assert sorted(data) == ["aws-spot-0001", "aws-spot-0002"]
    one, two = (pilot_settings_from(data[n]) for n in ("aws-spot-0001", "aws-spot-0002"))
    assert (one["machine"], one["token"], one["cores"], one["slots"]) == (
        "aws-spot-0001", "cp_token-abc", 2, 2)
    assert (two["machine"], two["cores"], two["memory_mb"], two["slots"]) == (
        "aws-spot-0002", 8, 16000, 8)  # the machine type the scheduler chose
    assert one["metadata_url"] == "http://169.254.169.254"  # watches for spot interruptions


def test_local_endpoints_via_pulumi(tmp_path):
    ep = endpoint_config(name="lp", driver="local", via="pulumi")
    cfg = local_stack_config(ep, ["lp-0002", "lp-0001"], tmp_path)
    assert cfg == {"cloudpilot:cloud": "local", "cloudpilot:endpoint": "lp",
                   "cloudpilot:machines": '["lp-0001", "lp-0002"]',
                   "cloudpilot:machinesDir": f"{tmp_path}/lp", "cloudpilot:stopGrace": "10"}
    with pytest.raises(ConfigError, match="driver 'ssh' has no option via"):
        endpoint_config(name="x", driver="ssh", via="pulumi")
    driver = PulumiDriver(ep, tmp_path / "data", "http://127.0.0.1:9", lambda m: "cp_token-l",
                          machines_dir=tmp_path / "machines")
    data = driver.user_data(["lp-0001"])
    pilot = json.loads(data["lp-0001"])  # the pilot's config, as the local driver writes it
    assert pilot["token"] == "cp_token-l" and pilot["machine"] == "lp-0001"
    assert pilot["workdir"] == f"{tmp_path}/machines/lp/lp-0001/work"
    # a machine that exists already is declared by name only: no token to go stale
    assert driver.user_data(["lp-0001", "lp-0002"], new=["lp-0002"])["lp-0001"] == \
        '{"machine": "lp-0001"}'


def test_an_update_in_a_preview_names_the_changed_properties():
    steps = [Step.from_urn("update", "aws:ec2/securityGroup:SecurityGroup",
                           urn("aws:ec2/securityGroup:SecurityGroup", "aws-spot-sg"),
                           ["ingress", "tags"])]
    diff = plan_from_preview("aws", "aws-spot", [], ["aws-spot-0001"], steps, {"update": 1})
    assert "  ~ aws:ec2/securityGroup:SecurityGroup aws-spot-sg (ingress, tags)" in diff.detail


def test_the_machines_an_update_failed_on_are_named():
    """Issue 24: a refusal blocks only the offers of the machines the engine names."""
    from controller.drivers.pulumi import failing_machines

    out = ("Updating (aws-spot):\n  + aws:ec2:Instance aws-spot-0003 creating (0s) error: 1 "
           "error occurred:\n  + aws:ec2:Instance aws-spot-0013 creating (1s)\n"
           "  aws:ec2:Instance (aws-spot-0003):\n    error: creating EC2 Instance: api error "
           "InsufficientInstanceCapacity: We currently do not have sufficient capacity\n")
    assert failing_machines(out, ["aws-spot-0003", "aws-spot-0013", "aws-spot-0001"]) == {
        "aws-spot-0003"}
    assert failing_machines("error: update failed", ["aws-spot-0003"]) == set()
