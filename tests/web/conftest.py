"""Load the mailhost pytest plugin if the installed entry point has not already."""

from __future__ import annotations


def pytest_configure(config):
    manager = config.pluginmanager
    if not manager.has_plugin("mailhost") and \
            not manager.has_plugin("mailhost.testing.pytest_plugin"):
        manager.import_plugin("mailhost.testing.pytest_plugin")
