"""Which kind of endpoint each `driver` setting is, and how one is built. A new kind is a
new module implementing controller.reconcile.endpoint.EndpointKind, plus one entry here."""

from __future__ import annotations

from collections.abc import Callable

from controller.config.settings import EndpointConfig
from controller.drivers.base import Driver
from controller.drivers.prices import make_price_source
from controller.drivers.ssh import SshDriver
from controller.reconcile.batch import make_batch_endpoint
from controller.reconcile.cloud import CloudEndpoint
from controller.reconcile.endpoint import EndpointKind, LoopEnv
from controller.reconcile.hosts import HostPoolEndpoint, make_ssh_driver
from controller.services.secrets import bootstrap_token


def _cloud(ep: EndpointConfig, env: LoopEnv, driver: Driver | None) -> EndpointKind:
    s = env.settings
    if driver is None:
        def token_for(machine: str, endpoint: str = ep.name) -> str:
            """A machine's one-time bootstrap token (exchanged at its pilot's registration)."""
            return bootstrap_token(env.store, s.data_dir, endpoint, machine)

        if ep.driver == "local" and ep.via == "direct":
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
    return make_batch_endpoint(ep, env)


def _hosts(ep: EndpointConfig, env: LoopEnv, driver: Driver | None) -> EndpointKind:
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
    return KINDS[ep.driver](ep, env, driver)
