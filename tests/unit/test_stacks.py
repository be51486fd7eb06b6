"""The Pulumi programs under pulumi.runtime.set_mocks (no CLI, no cloud): the config the
controller's driver writes goes in; exactly the named machines come out."""

import asyncio
import json

import pulumi
import pytest

from controller.config.settings import endpoint_config
from controller.drivers.pulumi import stack_config

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhGk2c3cl2hSAFA0xD8i8T1QqBJ8GiqNcXd cloudpilot@ctl"
SECRET = "4dabf18193072939515e22adb298388d"  # Pulumi's marker of a secret value


class Mocks(pulumi.runtime.Mocks):
    """Pulumi's sanctioned stand-in for the engine: records every resource declared."""

    def __init__(self):
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[pulumi.runtime.MockCallArgs] = []

    def new_resource(self, args):
        self.resources.append(args)
        state = dict(args.inputs)
        if args.typ == "aws:ec2/instance:Instance":
            state.update(private_ip="10.0.1.7", public_ip="203.0.113.7")
        if args.typ == "openstack:compute/instance:Instance":
            state.update(access_ip_v4="192.168.5.7")
        if args.typ == "openstack:networking/floatingIp:FloatingIp":
            state.update(address="198.51.100.7")
        if args.typ == "aws:ec2/keyPair:KeyPair":
            state.update(key_name="cloudpilot-aws-spot-123")
        return f"{args.name}-id", state

    def call(self, args):
        self.calls.append(args)
        if args.token == "openstack:networking/getNetwork:getNetwork":
            return {"id": "net-42", "name": args.args.get("name")}
        return {}

    def of(self, typ):
        return {r.name: r for r in self.resources if r.typ == typ}


def run(kind, endpoint, machines, user_data=None, outputs=None, specs=None):
    """Run a stack's program under mocks with the config the driver writes for `endpoint`;
    the stack's outputs, resolved, go into `outputs`."""
    mocks = Mocks()
    # Pulumi's mocks run on the main thread's current loop: give them one whatever ran before
    asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(mocks, project="cloudpilot", stack=endpoint.name, preview=False)
    pulumi.runtime.set_all_config(stack_config(endpoint, machines, specs))
    data = {m: f"#cloud-config\n# user-data of {m}\n" for m in machines} \
        if user_data is None else user_data
    if kind == "aws":
        from stacks.aws import program
    else:
        from stacks.openstack import program

    @pulumi.runtime.test
    def go():
        program(user_data=data)
        exported = pulumi.runtime.get_root_resource().outputs
        return pulumi.Output.from_input(exported).apply(
            lambda v: outputs.update(v) if outputs is not None else None)

    go()
    return mocks


def aws_endpoint(**aws):
    return endpoint_config(name="aws-spot", driver="aws", tags=["linux"], aws={
        "region": "eu-west-1", "ami": "ami-0abc", "instance_type": "c6a.large",
        "subnet_id": "subnet-1", "availability_zone": "eu-west-1b", "public_key": KEY,
        "tags": {"team": "physics"}, **aws})


def test_aws_named_machines_in_exactly_those_instances_out():
    machines = ["aws-spot-0002", "aws-spot-0005", "aws-spot-0009"]
    mocks = run("aws", aws_endpoint(), machines)
    instances = mocks.of("aws:ec2/instance:Instance")
    assert sorted(instances) == machines
    i = instances["aws-spot-0005"].inputs
    assert i["ami"] == "ami-0abc" and i["instanceType"] == "c6a.large"
    assert i["subnetId"] == "subnet-1" and i["availabilityZone"] == "eu-west-1b"
    assert i["tags"] == {"Name": "aws-spot-0005", "cloudpilot:endpoint": "aws-spot",
                         "cloudpilot:machine": "aws-spot-0005", "team": "physics"}
    assert i["instanceInitiatedShutdownBehavior"] == "terminate"
    assert i["keyName"] == "cloudpilot-aws-spot-123"
    assert "instanceMarketOptions" not in i  # on-demand
    # the user-data is a secret: it holds the pilot token
    assert i["userData"] == {SECRET: "1b47061264138c4ac30d75fd1eb44270",
                             "value": "#cloud-config\n# user-data of aws-spot-0005\n"}
    key = mocks.of("aws:ec2/keyPair:KeyPair")["aws-spot-key"].inputs
    assert key["publicKey"] == KEY


def test_aws_outputs_name_each_machines_id_and_addresses():
    out = {}
    run("aws", aws_endpoint(), ["aws-spot-0001", "aws-spot-0002"], outputs=out)
    assert out["endpoint"] == "aws-spot" and out["security_group"] == "aws-spot-sg-id"
    assert out["machines"] == {
        n: {"id": f"{n}-id", "private_ip": "10.0.1.7", "public_ip": "203.0.113.7"}
        for n in ("aws-spot-0001", "aws-spot-0002")}


def test_aws_spot_with_a_max_price():
    mocks = run("aws", aws_endpoint(spot=True, spot_max_price=0.035), ["aws-spot-0001"])
    market = mocks.of("aws:ec2/instance:Instance")["aws-spot-0001"].inputs[
        "instanceMarketOptions"]
    assert market == {"marketType": "spot", "spotOptions": {
        "maxPrice": "0.035", "spotInstanceType": "one-time",
        "instanceInterruptionBehavior": "terminate"}}


def test_aws_machines_the_price_aware_scheduler_placed():
    """A priced endpoint: each new machine gets the type, zone (and its subnet) and market the
    scheduler chose; a machine without a spec gets the endpoint's settings."""
    ep = aws_endpoint(subnets={"eu-west-1a": "subnet-a", "eu-west-1c": "subnet-c"})
    specs = {"aws-spot-0001": {"type": "c5.xlarge", "zone": "eu-west-1a", "market": "spot",
                               "price": 0.07, "cores": 4, "memory_mb": 8192, "slots": 4},
             "aws-spot-0002": {"type": "m5.large", "zone": "eu-west-1c",
                               "market": "on-demand", "price": 0.107}}
    mocks = run("aws", ep, ["aws-spot-0001", "aws-spot-0002", "aws-spot-0003"], specs=specs)
    got = {n: r.inputs for n, r in mocks.of("aws:ec2/instance:Instance").items()}
    assert [(got[n]["instanceType"], got[n]["availabilityZone"], got[n]["subnetId"],
             "instanceMarketOptions" in got[n]) for n in sorted(got)] == [
        ("c5.xlarge", "eu-west-1a", "subnet-a", True),
        ("m5.large", "eu-west-1c", "subnet-c", False),
        ("c6a.large", "eu-west-1b", "subnet-1", False)]


def test_aws_security_group_opens_only_what_the_mode_needs():
    sg = run("aws", aws_endpoint(), ["aws-spot-0001"]).of(
        "aws:ec2/securityGroup:SecurityGroup")["aws-spot-sg"].inputs
    assert sg.get("ingress", []) == []  # pilot mode: pilots only call out
    assert [(e["protocol"], e["cidrBlocks"]) for e in sg["egress"]] == [("-1", ["0.0.0.0/0"])]
    ssh = endpoint_config(name="aws-ssh", driver="aws", contextualization="ssh",
                         ssh_endpoint="hosts", aws={"region": "r", "ami": "ami-1",
                                                    "public_key": KEY,
                                                    "ssh_cidr": "10.0.0.5/32"})
    sg = run("aws", ssh, ["aws-ssh-0001"]).of(
        "aws:ec2/securityGroup:SecurityGroup")["aws-ssh-sg"].inputs
    assert [(r["protocol"], r["fromPort"], r["toPort"], r["cidrBlocks"])
            for r in sg["ingress"]] == [("tcp", 22, 22, ["10.0.0.5/32"])]


def test_no_machine_wanted_no_instance_declared():
    mocks = run("aws", aws_endpoint(), [])
    assert mocks.of("aws:ec2/instance:Instance") == {}


def test_a_machine_without_user_data_is_refused():
    with pytest.raises(Exception, match="no user-data"):
        run("aws", aws_endpoint(), ["aws-spot-0001"], user_data={})


def openstack_endpoint(**os_):
    return endpoint_config(name="os", driver="openstack", openstack={
        "cloud": "mycloud", "flavor": "m1.large", "image": "debian-12", "network": "private",
        "public_key": KEY, **os_})


def test_openstack_flavor_image_network_and_metadata():
    machines = ["os-0001", "os-0003"]
    mocks = run("openstack", openstack_endpoint(), machines)
    instances = mocks.of("openstack:compute/instance:Instance")
    assert sorted(instances) == machines
    i = instances["os-0003"].inputs
    assert i["flavorName"] == "m1.large" and i["imageName"] == "debian-12"
    assert i["name"] == "os-0003" and i["keyPair"] == "cloudpilot-os"
    assert i["metadata"] == {"cloudpilot-endpoint": "os", "cloudpilot-machine": "os-0003"}
    assert i["userData"][SECRET]
    port = mocks.of("openstack:networking/port:Port")["os-0003-port"].inputs
    assert port["networkId"] == "net-42"  # the network named in the config
    assert port["securityGroupIds"] == ["os-sg-id"]
    (call,) = [c for c in mocks.calls if "getNetwork" in c.token]
    assert call.args["name"] == "private"
    sg_rules = mocks.of("openstack:networking/secGroupRule:SecGroupRule")
    assert sg_rules == {}  # pilot mode: no inbound rule
    assert mocks.of("openstack:networking/floatingIp:FloatingIp") == {}


def test_openstack_flavor_and_zone_per_machine_on_a_priced_endpoint():
    mocks = run("openstack", openstack_endpoint(), ["os-0001", "os-0002"],
                specs={"os-0001": {"type": "m1.xlarge", "zone": "nova-2"}})
    got = {n: r.inputs for n, r in mocks.of("openstack:compute/instance:Instance").items()}
    assert (got["os-0001"]["flavorName"], got["os-0001"]["availabilityZone"]) == (
        "m1.xlarge", "nova-2")
    assert got["os-0002"]["flavorName"] == "m1.large"


def test_openstack_floating_ips_when_a_pool_is_set():
    out = {}
    mocks = run("openstack", openstack_endpoint(floating_ip_pool="public"), ["os-0001"],
                outputs=out)
    fip = mocks.of("openstack:networking/floatingIp:FloatingIp")["os-0001-fip"].inputs
    assert fip["pool"] == "public" and fip["portId"] == "os-0001-port-id"
    assert out["machines"] == {"os-0001": {"id": "os-0001-id", "private_ip": "192.168.5.7",
                                           "public_ip": "198.51.100.7"}}


def test_the_cli_program_reads_the_user_data_from_secret_config():
    """Run by the `pulumi` CLI (stacks/__main__.py), the program has no controller to hand it
    the user-data: it reads the secret config cloudpilot:userData."""
    ep = aws_endpoint()
    mocks = Mocks()
    # Pulumi's mocks run on the main thread's current loop: give them one whatever ran before
    asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(mocks, project="cloudpilot", stack="aws-spot", preview=True)
    cfg = stack_config(ep, ["aws-spot-0001"])
    cfg["cloudpilot:userData"] = json.dumps({"aws-spot-0001": "#cloud-config\n"})
    pulumi.runtime.set_all_config(cfg, secret_keys=["cloudpilot:userData"])
    from stacks.aws import program

    pulumi.runtime.test(program)()
    (inst,) = mocks.of("aws:ec2/instance:Instance").values()
    assert inst.inputs["userData"] == {SECRET: "1b47061264138c4ac30d75fd1eb44270",
                                       "value": "#cloud-config\n"}
