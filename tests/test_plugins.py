"""The plugin host: built-ins by name, third parties by entry point, blocking, fail-fast on typos."""
from __future__ import annotations

import importlib
import sys

import pytest

from router import hookimpl
from router.channels import StartupError
from router.plugins import BLOCK_ENV, build_plugin_manager, describe_plugins


def names(pm):
    return sorted(name for name, plugin in pm.list_name_plugin() if plugin is not None)


def test_builtins_are_registered_by_name():
    pm = build_plugin_manager(entry_points=False)
    assert names(pm) == ["api", "core.assignment", "core.csat", "core.routing", "email"]


def test_plugins_can_be_blocked_by_config_and_environment(monkeypatch):
    assert "api" not in names(build_plugin_manager(["api"], entry_points=False))
    monkeypatch.setenv(BLOCK_ENV, " api , other")
    pm = build_plugin_manager(entry_points=False)
    assert "api" not in names(pm) and pm.is_blocked("other")


def test_core_plugins_cannot_be_blocked():
    with pytest.raises(StartupError, match="core.routing"):
        build_plugin_manager(["core.routing"], entry_points=False)


PLUGIN_SOURCE = '''
from router import hookimpl
from router.channels import Channel

@hookimpl
def switchboard_register_channels(registry):
    registry.add(Channel(name="smsdemo", title="SMS demo"))
'''


def install(folder, source: str) -> None:
    """Put a real third-party distribution on sys.path, found through the `switchboard` entry-point group."""
    (folder / "sb_smsdemo.py").write_text(source)
    dist = folder / "sb_smsdemo-2.3.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sb-smsdemo\nVersion: 2.3.1\n")
    (dist / "entry_points.txt").write_text("[switchboard]\nsmsdemo = sb_smsdemo\n")
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()


@pytest.fixture
def installed_plugin(tmp_path):
    install(tmp_path, PLUGIN_SOURCE)
    yield "smsdemo"
    sys.path.remove(str(tmp_path))
    sys.modules.pop("sb_smsdemo", None)


def test_an_installed_plugin_with_a_misspelt_hook_stops_start_up(tmp_path):
    install(tmp_path, PLUGIN_SOURCE + "\n@hookimpl\ndef switchboard_deliverr(outbound):\n    return None\n")
    try:
        with pytest.raises(StartupError, match="switchboard_deliverr.*misspelt"):
            build_plugin_manager()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("sb_smsdemo", None)


def test_third_party_plugins_load_from_entry_points_with_their_version(installed_plugin):
    pm = build_plugin_manager()
    info = {p.name: p for p in describe_plugins(pm)}
    assert info["smsdemo"].version == "2.3.1" and info["smsdemo"].source == "sb-smsdemo"
    assert info["smsdemo"].hooks == ("switchboard_register_channels",)
    assert info["api"].source == "builtin"
    assert [p.source for p in describe_plugins(pm)][-1] == "sb-smsdemo"  # built-ins listed first


def test_third_party_plugins_can_be_blocked(installed_plugin, monkeypatch):
    monkeypatch.setenv(BLOCK_ENV, "smsdemo")
    pm = build_plugin_manager()
    assert "smsdemo" not in names(pm)


def test_wrappers_are_refused_where_implementations_are_called_one_by_one():
    class Wrapper:
        @hookimpl(wrapper=True)
        def switchboard_deliver(self, outbound):
            return (yield)

    pm = build_plugin_manager(entry_points=False)
    pm.register(Wrapper())
    from router.plugins import check_no_wrappers

    with pytest.raises(StartupError, match="switchboard_deliver cannot be implemented as a wrapper"):
        check_no_wrappers(pm)
