"""Settings of cloud endpoints: the `[endpoints.aws]` and `[endpoints.openstack]` sections.

Credentials never go here: the Pulumi providers read them from the environment (AWS_PROFILE or
AWS_ACCESS_KEY_ID/..., OS_CLOUD with clouds.yaml or OS_AUTH_URL/...)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CloudConfig(BaseModel):
    """What every cloud section has: key pair, SSH access (ssh mode) and extra tags."""

    model_config = ConfigDict(extra="forbid")

    public_key: str | None = Field(
        None, description="an OpenSSH public key: a key pair is made from it, and in ssh mode "
        "it is the only key of the machines' user")
    public_key_file: Path | None = Field(None, description="or read the public key from a file")
    key_name: str | None = Field(None, description="an existing key pair to use instead")
    ssh_user: str = Field("cloudpilot", pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
                          description="the user made in ssh mode")
    ssh_cidr: str | None = Field(
        None, description="who may reach port 22 (ssh mode only), e.g. the controller's "
        "address/32; in pilot mode no inbound port is open")
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags / metadata")

    @model_validator(mode="after")
    def _one_key(self) -> CloudConfig:
        if self.public_key and self.public_key_file:
            raise ValueError("give public_key or public_key_file, not both")
        return self

    def read_public_key(self) -> str | None:
        if self.public_key_file is not None:
            try:
                return self.public_key_file.expanduser().read_text().strip()
            except OSError as e:
                raise ValueError(f"cannot read public_key_file: {e}") from None
        return self.public_key.strip() if self.public_key else None


class AwsConfig(CloudConfig):
    """EC2 machines, on-demand or spot."""

    region: str = Field(min_length=1)
    ami: str = Field(pattern=r"^ami-[0-9a-f]+$", description="the machine image (with python3)")
    instance_type: str = "t3.small"
    subnet_id: str | None = Field(None, description="the subnet (and so the AZ) to start in")
    subnets: dict[str, str] = Field(
        default_factory=dict, description="priced endpoints: the subnet of each zone the "
        "scheduler may choose (zone -> subnet id)")
    availability_zone: str | None = None
    vpc_id: str | None = Field(None, description="the VPC of the security group (default VPC)")
    spot: bool = False
    spot_max_price: float | None = Field(
        None, gt=0, description="USD per hour; none: up to the on-demand price")
    root_volume_gb: int | None = Field(None, ge=8, le=16384)

    @model_validator(mode="after")
    def _spot(self) -> AwsConfig:
        if self.spot_max_price is not None and not self.spot:
            raise ValueError("spot_max_price needs spot = true")
        return self


class OpenStackConfig(CloudConfig):
    """OpenStack compute instances."""

    cloud: str | None = Field(None, description="an entry of clouds.yaml (else OS_* variables)")
    region: str | None = None
    flavor: str = Field(min_length=1)
    image: str = Field(min_length=1, description="image name (with python3)")
    network: str = Field(min_length=1, description="the network the machines join")
    floating_ip_pool: str | None = Field(None, description="give each machine a public address")
    availability_zone: str | None = None
