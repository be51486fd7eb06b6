"""Which kind of endpoint each `driver` setting is, and how one is built: the kinds that come
with cloudpilot here, and those a site's own package adds through the entry point group
`cloudpilot.endpoint_kinds` (see controller/kinds.py). The loop does not change for either."""

from __future__ import annotations

from collections.abc import Callable

from controller.config.settings import (
    BatchEndpointConfig,
    EndpointConfig,
    LocalEndpointConfig,
    PricedEndpointConfig,
    SshEndpointConfig,
)
from controller.drivers.base import Driver
from controller.drivers.prices import make_price_source
from controller.drivers.ssh import SshDriver
from controller.errors import ConfigError
from controller.kinds import plugin_kind
from controller.reconcile.batch import make_batch_endpoint
from controller.reconcile.cloud import CloudEndpoint
from controller.reconcile.endpoint import EndpointKind, LoopEnv
from controller.reconcile.hosts import HostPoolEndpoint, make_ssh_driver
from controller.services.secrets import bootstrap_token


def _cloud(ep: EndpointConfig, env: LoopEnv, driver: Driver | None) -> EndpointKind:
    assert isinstance(ep, PricedEndpointConfig)
    s = env.settings
    if driver is None:
        def token_for(machine: str, endpoint: str = ep.name) -> str:
            """A machine's one-time bootstrap token (exchanged at its pilot's registration)."""
            return bootstrap_token(env.store, s.data_dir, endpoint, machine)

        if isinstance(ep, LocalEndpointConfig) and ep.via == "direct":
            from controller.drivers.local import LocalDriver

            driver = LocalDriver(ep, s.local_machines_dir, s.url, token_for,
                                 hide=s.controller_paths())
        else:
            from controller.drivers.pulumi import PulumiDriver  # the cloud extra, when used

            driver = PulumiDriver(ep, s.data_dir, s.url, token_for,
                                  machines_dir=s.local_machines_dir, hide=s.controller_paths(),
                                  root=s.pulumi_root, backend_url=s.pulumi_backend_url)
    prices = None if ep.prices is None else make_price_source(
        ep.prices, {t.name for t in ep.machine_types})
    return CloudEndpoint(ep, driver, env, prices)


def _batch(ep: EndpointConfig, env: LoopEnv, driver: Driver | None) -> EndpointKind:
    assert isinstance(ep, BatchEndpointConfig)
    return make_batch_endpoint(ep, env)


def _hosts(ep: EndpointConfig, env: LoopEnv, driver: Driver | None) -> EndpointKind:
    assert isinstance(ep, SshEndpointConfig)
    ssh = driver if isinstance(driver, SshDriver) else make_ssh_driver(env.settings, env.store,
                                                                        ep)
    return HostPoolEndpoint(ep, ssh, env)


# driver setting -> how to build that kind of endpoint (with a given driver, for tests)
KINDS: dict[str, Callable[[EndpointConfig, LoopEnv, Driver | None], EndpointKind]] = {
    "local": _cloud,
    "aws": _cloud,
    "openstack": _cloud,
    "ssh": _hosts,
    "slurm": _batch,
    "sge": _batch,
}


def make_endpoint(ep: EndpointConfig, env: LoopEnv,
                  driver: Driver | None = None) -> EndpointKind:
    build = KINDS.get(ep.driver)
    if build is not None:
        return build(ep, env, driver)
    kind = plugin_kind(ep.driver)
    if kind is None:
        raise ConfigError(f"endpoint {ep.name}: no kind of endpoint is installed for driver "
                          f"{ep.driver!r}")
    built: EndpointKind = kind.build(ep, env)
    return built
