"""OpenStack machines for one cloudpilot endpoint: exactly the named machines in the stack
config, each a compute instance with the endpoint's flavor and image on a port of its network
(behind a security group that opens only what the contextualization needs), a key pair,
metadata naming the endpoint and the machine, user-data attached as a secret, and optionally a
floating IP."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_openstack as openstack

from stacks.common import Common, run_program

IMMUTABLE = ["flavorName", "imageName", "userData", "keyPair", "availabilityZone"]


@dataclass(frozen=True)
class OpenStackSettings:
    flavor: str
    image: str
    network: str
    floating_ip_pool: str | None = None
    availability_zone: str | None = None


def read_settings(cfg: pulumi.Config) -> OpenStackSettings:
    return OpenStackSettings(
        flavor=cfg.require("flavor"), image=cfg.require("image"),
        network=cfg.require("network"), floating_ip_pool=cfg.get("floatingIpPool"),
        availability_zone=cfg.get("availabilityZone"))


@dataclass
class OpenStackMachines:
    security_group: openstack.networking.SecGroup
    key_pair: openstack.compute.Keypair | None
    instances: dict[str, openstack.compute.Instance]
    ports: dict[str, openstack.networking.Port]
    floating_ips: dict[str, openstack.networking.FloatingIp] = field(default_factory=dict)

    def exports(self) -> dict[str, Any]:
        fips = self.floating_ips
        return {"security_group": self.security_group.id, "machines": {
            name: {"id": i.id, "private_ip": i.access_ip_v4,
                   "public_ip": fips[name].address if name in fips else None}
            for name, i in self.instances.items()}}


def security_group(common: Common) -> openstack.networking.SecGroup:
    """A new security group allows all egress and no ingress: enough for pilots, which only
    call out. In ssh mode, port 22 is open to ssh_cidr only."""
    sg = openstack.networking.SecGroup(
        f"{common.endpoint}-sg", name=f"cloudpilot-{common.endpoint}",
        description=f"cloudpilot endpoint {common.endpoint}")
    if common.contextualization == "ssh":
        if not common.ssh_cidr:
            raise ValueError("ssh mode needs cloudpilot:sshCidr (who may reach port 22)")
        openstack.networking.SecGroupRule(
            f"{common.endpoint}-ssh", security_group_id=sg.id, direction="ingress",
            ethertype="IPv6" if ":" in common.ssh_cidr else "IPv4", protocol="tcp",
            port_range_min=22, port_range_max=22, remote_ip_prefix=common.ssh_cidr,
            description="SSH from the cloudpilot controller (ssh mode)")
    return sg


def build(common: Common, settings: OpenStackSettings,
          user_data: dict[str, pulumi.Output[str]]) -> OpenStackMachines:
    sg = security_group(common)
    key_pair = None
    key_name: pulumi.Input[str] | None = common.key_name
    if common.public_key:
        key_pair = openstack.compute.Keypair(
            f"{common.endpoint}-key", name=f"cloudpilot-{common.endpoint}",
            public_key=common.public_key)
        key_name = key_pair.name
    network = openstack.networking.get_network_output(name=settings.network)
    out = OpenStackMachines(sg, key_pair, {}, {})
    for name in common.machines:
        spec = common.specs.get(name, {})
        meta = {**common.tags, "cloudpilot-endpoint": common.endpoint,
                "cloudpilot-machine": name}
        port = openstack.networking.Port(
            f"{name}-port", name=name, network_id=network.id,
            security_group_ids=[sg.id], admin_state_up=True)
        out.ports[name] = port
        out.instances[name] = openstack.compute.Instance(
            name,
            name=name,
            flavor_name=spec.get("flavor", settings.flavor),
            image_name=settings.image,
            key_pair=key_name,
            availability_zone=spec.get("availabilityZone", settings.availability_zone),
            networks=[openstack.compute.InstanceNetworkArgs(port=port.id)],
            metadata=meta,
            user_data=user_data[name],
            # machines are cattle: new settings (image, flavor, user-data: read at first boot
            # only) apply to new machines and never replace running ones
            opts=pulumi.ResourceOptions(ignore_changes=IMMUTABLE),
        )
        if settings.floating_ip_pool:
            out.floating_ips[name] = openstack.networking.FloatingIp(
                f"{name}-fip", pool=settings.floating_ip_pool, port_id=port.id,
                description=f"cloudpilot machine {name}")
    return out


def program(user_data: Mapping[str, str] | None = None) -> None:
    """The Pulumi program. `user_data` (name -> user-data) comes from the controller; run by
    the CLI, from the secret config."""
    run_program(lambda common, cfg, data: build(common, read_settings(cfg), data), user_data)


__all__ = ["OpenStackMachines", "OpenStackSettings", "build", "program", "read_settings"]
