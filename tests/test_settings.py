"""Frozen settings per part: made by the composition root, replaced (never changed) on reload."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from mailhost.config import as_dict, load
from mailhost.service import makeService
from mailhost.settings import OutboundSettings, Settings, SMTPSettings
from mailhost.store.memory import MemoryStore
from tests.mailhost_process import write_config


def test_settings_are_frozen_all_the_way_down():
    settings = Settings.from_config(load(None))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.smtp.max_message_size = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.outbound.tls_policy_domains["example.com"] = "none"  # type: ignore[index]
    assert isinstance(settings.relay.relay_networks, tuple)
    assert isinstance(settings.directory.domains, tuple)


def test_each_part_gets_its_own_settings_not_the_config(tmp_path):
    config = load(None, [f'server.data_dir="{tmp_path}"', 'server.hostname="mx.test"',
                         "smtp.listen=[\"tcp:0:interface=127.0.0.1\"]",
                         "submission.listen=[]", "pop3.listen=[\"tcp:0:interface=127.0.0.1\"]",
                         "imap.listen=[\"tcp:0:interface=127.0.0.1\"]", "outbound.port=2525"])
    root = makeService(config, store=MemoryStore())
    (smtp,), (pop3,), (imap,) = (root.factories[k] for k in ("smtp", "pop3", "imap"))
    assert smtp.settings == SMTPSettings.from_config(config)
    assert smtp.settings.hostname == "mx.test"
    assert pop3.settings is root.settings.pop3 and imap.settings is root.settings.imap
    assert root.outbound.settings == OutboundSettings.from_config(config)
    assert root.outbound.settings.port == 2525
    for part in (smtp, pop3, imap, root.outbound):
        assert not hasattr(part, "config")


def test_reload_hands_over_new_settings_and_changes_nothing_running(tmp_path):
    path = tmp_path / "mailhost.toml"
    data = {"server": {"data_dir": str(tmp_path / "data"), "domains": ["example.test"]},
            "smtp": {"listen": ["tcp:0:interface=127.0.0.1"]},
            "submission": {"listen": []}, "pop3": {"listen": []},
            "imap": {"listen": ["tcp:0:interface=127.0.0.1"]}}
    write_config(str(path), data)
    config = load(str(path))
    root = makeService(config, store=MemoryStore())
    running_config, before = root.config, copy.deepcopy(as_dict(root.config))
    old = root.settings
    (smtp,) = root.factories["smtp"]

    data["smtp"]["max_message_size"] = 2 * 1024 * 1024
    data["server"]["domains"] = ["example.test", "example.org"]
    data["auth"] = {"max_failures": 9}
    data["outbound"] = {"port": 2526, "retry_initial": 60.0}
    data["imap"]["listen"] = ["tcp:1:interface=127.0.0.1"]  # needs a restart
    write_config(str(path), data)
    applied, restart = root.reload()

    assert sorted(applied) == ["auth.max_failures", "outbound.port", "outbound.retry_initial",
                               "server.domains", "smtp.max_message_size"]
    assert restart == ["imap.listen"]
    # The running objects were not changed: new ones replaced them.
    assert as_dict(running_config) == before and root.config is not running_config
    assert old.smtp.max_message_size == 32 * 1024 * 1024
    assert smtp.settings is root.settings.smtp
    assert smtp.settings.max_message_size == 2 * 1024 * 1024
    assert root.outbound.settings.port == 2526 and root.outbound.settings.retry_initial == 60.0
    assert root.login.throttle.max_failures == 9
    assert root.directory.is_local_domain("example.org")
    assert root.config.imap.listen == ["tcp:0:interface=127.0.0.1"]  # kept until a restart
