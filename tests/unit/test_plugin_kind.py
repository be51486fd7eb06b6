"""A kind of endpoint from a site's own package: tests/plugins/tiny_kind is installed (its
package and a .dist-info naming its entry point, as an installer writes them), found through
the entry point group `cloudpilot.endpoint_kinds`, configured and run by the reconcile loop."""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

import pytest

from controller.config.settings import Settings
from controller.domain.jobs import NewJob, Requirements
from controller.errors import ConfigError
from controller.kinds import GROUP, plugin_kinds
from controller.reconcile.loop import Reconciler
from controller.store import Store
from controller.testing import Clock

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "tiny_kind"


def install(source: Path, site: Path) -> None:
    """Install a pure-Python package into `site` as pip would lay it out: the package, and
    NAME-VERSION.dist-info with METADATA and entry_points.txt from its pyproject.toml."""
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    for package in (p for p in source.iterdir() if (p / "__init__.py").exists()):
        shutil.copytree(package, site / package.name)
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    lines = [f"[{GROUP}]"] + [f"{k} = {v}" for k, v in
                              project["entry-points"][GROUP].items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    install(PLUGIN, site)
    monkeypatch.syspath_prepend(str(site))
    plugin_kinds.cache_clear()
    yield site
    plugin_kinds.cache_clear()
    sys.modules.pop("tiny_kind", None)


def config(tmp_path, options: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(f'database = "cp.db"\n[[endpoints]]\nname = "t"\ndriver = "tiny"\n'
                 f'max_machines = 1\n[endpoints.options]\n{options}\n')
    return p


def test_a_kind_from_a_plugin_package_is_configured_and_runs_in_the_loop(site, tmp_path):
    settings = Settings.load(config(tmp_path, 'greeting = "hi"'))
    ep = settings.endpoints[0]
    assert (type(ep).__name__, ep.options) == ("PluginEndpointConfig", {"greeting": "hi"})
    store = Store(settings.database)
    try:
        store.endpoints.sync([e.model_dump() for e in settings.endpoints])
        store.tokens.create_user("alice", "g")
        store.jobs.submit([NewJob("/bin/true", requirements=Requirements(cores=1))] * 2,
                          "alice", "g", 3)
        loop = Reconciler(settings, store, clock=Clock())
        result = loop.tick()
        assert [d.reasons for d in result.decisions] == [
            ("hi: 2 jobs wait, the tiny kind starts none",)]
        assert store.endpoints.get("t").message == "hi: 2 jobs wait, the tiny kind starts none"
    finally:
        store.close()


def test_a_plugin_kind_checks_its_own_options(site, tmp_path):
    with pytest.raises(ConfigError) as e:
        Settings.load(config(tmp_path, 'greting = "hi"'))
    assert str(e.value).splitlines()[1:] == [
        "  endpoints.0: Value error, driver 'tiny': options.greting: Extra inputs are not "
        "permitted"]


def test_without_the_plugin_its_driver_is_unknown(tmp_path):
    plugin_kinds.cache_clear()
    with pytest.raises(ConfigError, match="unknown driver 'tiny'"):
        Settings.load(config(tmp_path, ""))
