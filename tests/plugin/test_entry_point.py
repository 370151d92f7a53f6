"""The pytest plugin is registered under the pytest11 entry point."""

from importlib.metadata import entry_points

import pytest


def test_plugin_is_registered_as_pytest11_entry_point() -> None:
    """Installing bm-ingest registers pytest_bm.plugin with pytest through pytest11."""
    found = {entry.name: entry.value for entry in entry_points(group="pytest11")}
    assert found.get("bm_ingest") == "pytest_bm.plugin"


def test_plugin_is_loaded_in_this_session(pytestconfig: pytest.Config) -> None:
    """Pytest loaded the plugin through the entry point, without any conftest import."""
    assert pytestconfig.pluginmanager.has_plugin("bm_ingest")
