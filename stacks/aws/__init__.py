"""EC2 machines for one cloudpilot endpoint: exactly the named machines in the stack config,
on-demand or spot (with a max price), in a subnet/AZ, behind a security group that opens only
what the contextualization needs, with a key pair, tags naming the endpoint and the machine, and
each machine's user-data attached as a secret."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from stacks.common import Common, machine_tags, run_program

IMMUTABLE = ["ami", "instanceType", "userData", "userDataBase64", "subnetId", "availabilityZone",
             "keyName", "instanceMarketOptions", "rootBlockDevice", "metadataOptions"]


@dataclass(frozen=True)
class AwsSettings:
    ami: str
    instance_type: str = "t3.small"
    subnet_id: str | None = None
    availability_zone: str | None = None
    vpc_id: str | None = None
    spot: bool = False
    spot_max_price: str | None = None  # USD per hour, as EC2 takes it
    root_volume_gb: int | None = None
    subnets: dict[str, str] = field(default_factory=dict)  # zone -> subnet (priced endpoints)


def read_settings(cfg: pulumi.Config) -> AwsSettings:
    """The cloud's own keys of the stack config (see controller/drivers/pulumi.py)."""
    volume = cfg.get_int("rootVolumeGb")
    return AwsSettings(
        ami=cfg.require("ami"),
        instance_type=cfg.get("instanceType") or "t3.small",
        subnet_id=cfg.get("subnetId"),
        availability_zone=cfg.get("availabilityZone"),
        vpc_id=cfg.get("vpcId"),
        spot=cfg.get_bool("spot") or False,
        spot_max_price=cfg.get("spotMaxPrice"),
        root_volume_gb=volume,
        subnets=json.loads(cfg.get("subnets") or "{}"),
    )


@dataclass
class AwsMachines:
    security_group: aws.ec2.SecurityGroup
    key_pair: aws.ec2.KeyPair | None
    instances: dict[str, aws.ec2.Instance]

    def exports(self) -> dict[str, Any]:
        return {"security_group": self.security_group.id, "machines": {
            name: {"id": i.id, "private_ip": i.private_ip, "public_ip": i.public_ip}
            for name, i in self.instances.items()}}


def security_group(common: Common, settings: AwsSettings) -> aws.ec2.SecurityGroup:
    """Pilots only call out (to the controller; payloads fetch what they need), so nothing is
    open inbound in pilot mode. In ssh mode, port 22 is open to ssh_cidr only."""
    ingress = []
    if common.contextualization == "ssh":
        if not common.ssh_cidr:
            raise ValueError("ssh mode needs cloudpilot:sshCidr (who may reach port 22)")
        ingress.append(aws.ec2.SecurityGroupIngressArgs(
            protocol="tcp", from_port=22, to_port=22, cidr_blocks=[common.ssh_cidr],
            description="SSH from the cloudpilot controller (ssh mode)"))
    return aws.ec2.SecurityGroup(
        f"{common.endpoint}-sg",
        description=f"cloudpilot endpoint {common.endpoint}",
        vpc_id=settings.vpc_id,
        ingress=ingress,
        egress=[aws.ec2.SecurityGroupEgressArgs(
            protocol="-1", from_port=0, to_port=0, cidr_blocks=["0.0.0.0/0"],
            ipv6_cidr_blocks=["::/0"], description="pilots call the controller")],
        tags={**common.tags, "cloudpilot:endpoint": common.endpoint},
    )


def market(spot: bool, settings: AwsSettings) -> aws.ec2.InstanceInstanceMarketOptionsArgs | None:
    """On-demand (None), or a one-time spot request that ends with the machine."""
    if not spot:
        return None
    return aws.ec2.InstanceInstanceMarketOptionsArgs(
        market_type="spot",
        spot_options=aws.ec2.InstanceInstanceMarketOptionsSpotOptionsArgs(
            max_price=settings.spot_max_price,  # None: up to the on-demand price
            spot_instance_type="one-time",
            instance_interruption_behavior="terminate"))


def build(common: Common, settings: AwsSettings,
          user_data: dict[str, pulumi.Output[str]]) -> AwsMachines:
    sg = security_group(common, settings)
    key_pair = None
    key_name: pulumi.Input[str] | None = common.key_name
    if common.public_key:
        key_pair = aws.ec2.KeyPair(
            f"{common.endpoint}-key", key_name_prefix=f"cloudpilot-{common.endpoint}-",
            public_key=common.public_key,
            tags={**common.tags, "cloudpilot:endpoint": common.endpoint})
        key_name = key_pair.key_name
    root = None
    if settings.root_volume_gb:
        root = aws.ec2.InstanceRootBlockDeviceArgs(volume_size=settings.root_volume_gb,
                                                   delete_on_termination=True)
    instances = {}
    for name in common.machines:
        spec = common.specs.get(name, {})
        zone = spec.get("availabilityZone", settings.availability_zone)
        subnet = settings.subnets.get(zone, settings.subnet_id) if zone else settings.subnet_id
        instances[name] = aws.ec2.Instance(
            name,
            ami=settings.ami,
            instance_type=spec.get("instanceType", settings.instance_type),
            subnet_id=subnet,
            availability_zone=zone,
            vpc_security_group_ids=[sg.id],
            key_name=key_name,
            user_data=user_data[name],
            instance_market_options=market(spec.get("spot", settings.spot), settings),
            # the machine powers itself off when its pilot ends idle: that ends it
            instance_initiated_shutdown_behavior="terminate",
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(http_tokens="required"),
            root_block_device=root,
            tags=machine_tags(common, name),
            volume_tags=machine_tags(common, name),
            # machines are cattle: new settings (image, type, user-data: read at first boot
            # only) apply to new machines and never replace or restart running ones
            opts=pulumi.ResourceOptions(ignore_changes=IMMUTABLE),
        )
    return AwsMachines(sg, key_pair, instances)


def program(user_data: Mapping[str, str] | None = None) -> None:
    """The Pulumi program. `user_data` (name -> user-data) comes from the controller; run by
    the CLI, from the secret config."""
    run_program(lambda common, cfg, data: build(common, read_settings(cfg), data), user_data)


__all__ = ["AwsMachines", "AwsSettings", "build", "program", "read_settings"]
