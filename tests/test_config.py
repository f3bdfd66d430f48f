"""The config model: TOML, overrides, one-line errors naming the key."""

from __future__ import annotations

import grp
import os
import subprocess
import sys

import pytest

from mailhost import config as cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def test_defaults_are_valid():
    c = cfg.load(None)
    assert c.smtp.max_message_size == 32 * 1024 * 1024
    assert c.smtp.max_recipients == 1000
    assert c.smtp.command_timeout == 300
    assert c.smtp.data_timeout == 600
    assert c.smtp.max_hops == 50


@pytest.mark.parametrize("name", ["dev.toml", "production.toml"])
def test_shipped_configs_parse(name, tmp_path):
    path = os.path.join(ROOT, "tap-configs", name)
    if name == "production.toml":
        # The production config names TLS files that exist only on a real server.
        cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
        from mailhost.tls import write_selfsigned

        write_selfsigned("mail.example.com", str(cert), str(key))
        c = cfg.load(path, [f'tls.cert="{cert}"', f'tls.key="{key}"'])
        assert c.tls_enabled and c.server.allow_plaintext_auth == "no"
        assert c.submission.listen_tls == ["tcp:465"]
    else:
        c = cfg.load(path)
        assert c.smtp.listen == ["tcp:2525:interface=127.0.0.1"]
        assert c.submission.listen == ["tcp:2587:interface=127.0.0.1"]
        assert c.pop3.listen == ["tcp:2110:interface=127.0.0.1"]
        assert c.imap.listen == ["tcp:2143:interface=127.0.0.1"]
        # Relative to the config file's directory, not to the working directory.
        assert c.server.data_dir == os.path.join(ROOT, "tap-configs", "mailhost-data")
        assert c.server.allow_plaintext_auth == "loopback"


def test_overrides_win_over_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[smtp]\nmax_recipients = 10\n')
    c = cfg.load(str(p), ["smtp.max_recipients=20", "server.hostname=mx.example"])
    assert c.smtp.max_recipients == 20
    assert c.server.hostname == "mx.example"


@pytest.mark.parametrize("text,needle", [
    ('[smtp]\nmax_message_size = "big"\n', "smtp.max_message_size"),
    ('[smtp]\nnope = 1\n', "smtp.nope: unknown key"),
    ('[nosuch]\nx = 1\n', "nosuch: unknown section"),
    ('[pop3]\ndelete = "shred"\n', "pop3.delete"),
    ('[server]\ndomains = []\n', "server.domains"),
    ('[smtp\n', "not valid TOML"),
    ('[tls]\ncert = "/nonexistent.pem"\n', "tls.cert"),
    ('[smtp]\nmax_recipients = -1\n', "smtp.max_recipients"),
    ('[imap]\nlisten_tls = ["tcp:993"]\n', "imap.listen_tls"),
    ('[store]\nfile_mode = "0755"\n', "store.file_mode"),  # x bits on files
    ('[store]\nfile_mode = "0400"\n', "store.file_mode"),  # owner cannot write
    ('[store]\nfile_mode = "rw-------"\n', "store.file_mode"),
    ('[store]\nfile_mode = 384\n', "store.file_mode"),
    ('[store]\ndir_mode = "0600"\n', "store.dir_mode"),  # no x for the owner
    ('[store]\ndir_mode = "2770"\n', "store.dir_mode"),  # setgid comes with the group
    ('[store]\ndir_mode = "07777"\n', "store.dir_mode"),
    ('[store]\ngroup = "no-such-group-here"\n', "store.group: no such group"),
])
def test_bad_values_name_the_key(tmp_path, text, needle):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(str(p))
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_relative_paths_resolve_against_the_config_files_directory(tmp_path, monkeypatch):
    """A relative data_dir (and cert, key) follows the config file, not the cwd; data
    files follow data_dir; command-line paths follow the cwd and are kept absolute."""
    conf = tmp_path / "etc" / "dev.toml"
    conf.parent.mkdir()
    conf.write_text('[server]\ndata_dir = "./data"\n[tls]\ncert = "tls/c.pem"\n'
                    'key = "/abs/k.pem"\n[auth]\npasswd_file = "users"\n'
                    '[outbound]\nqueue_dir = "/var/q"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    c = cfg.load("../etc/dev.toml")
    etc = str(tmp_path / "etc")
    assert c.server.data_dir == f"{etc}/data"
    assert (c.tls.cert, c.tls.key) == (f"{etc}/tls/c.pem", "/abs/k.pem")
    assert c.auth.passwd_file == f"{etc}/data/users"
    assert c.auth.aliases_file == f"{etc}/data/aliases"
    assert c.store.path == f"{etc}/data/mail"
    assert c.outbound.queue_dir == "/var/q"
    # No data_dir in the file: the default is relative to the file too.
    (tmp_path / "etc" / "bare.toml").write_text("")
    assert cfg.load(str(tmp_path / "etc" / "bare.toml")).server.data_dir == f"{etc}/mailhost-data"
    # Command-line overrides are relative to the cwd, and kept absolute for a reload.
    c = cfg.load(str(conf), ['server.data_dir="d2"', "store.path=m2"])
    assert c.server.data_dir == f"{elsewhere}/d2"
    assert c.store.path == f"{elsewhere}/d2/m2"
    assert c.overrides == [f'server.data_dir="{elsewhere}/d2"', "store.path=m2"]
    monkeypatch.chdir(tmp_path)
    assert cfg.load(c.source, c.overrides).server.data_dir == f"{elsewhere}/d2"
    # Without a file, relative paths follow the cwd.
    assert cfg.load(None).server.data_dir == f"{tmp_path}/mailhost-data"


def test_every_path_key_is_resolved():
    """Every key named like a path is in PATH_KEYS, so none is left relative to the cwd."""
    import re

    looks_like_path = re.compile(r"(path|file|dir|cert|key)$")
    named = {f"{section}.{key}" for section, values in cfg.as_dict(cfg.Config()).items()
             for key, value in values.items() if isinstance(value, str)
             and looks_like_path.search(key)}
    assert named == set(cfg.PATH_KEYS)


def test_load_reads_no_tls_file(tmp_path):
    """load() only checks the shape of [tls]; the cert is read by whoever needs it."""
    p = tmp_path / "c.toml"
    p.write_text('[tls]\ncert = "missing.pem"\nkey = "missing.key"\n')
    c = cfg.load(str(p))
    assert c.tls.cert == str(tmp_path / "missing.pem")


def test_store_modes_are_parsed_and_the_group_resolved(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[store]\nfile_mode = "0660"\ndir_mode = "0770"\ngroup = "mail"\n')
    c = cfg.load(str(p))
    assert cfg.store_modes(c.store) == (0o660, 0o770, grp.getgrnam("mail").gr_gid)
    assert cfg.store_modes(cfg.load(None, ["store.group=12345"]).store) == (0o600, 0o700,
                                                                            12345)
    assert cfg.store_modes(cfg.Config().store) == (0o600, 0o700, None)


def test_missing_file():
    with pytest.raises(cfg.ConfigError, match="no such config file"):
        cfg.load("/nonexistent/mailhost.toml")


@pytest.mark.parametrize("args,needle", [
    (["--config", "/nonexistent.toml"], "no such config file"),
    (["--set", "smtp.max_message_size=huge"], "smtp.max_message_size"),
    (["--set", "smtp.bogus=1"], "smtp.bogus: unknown key"),
    (["--set", "store.group=no-such-group-here"], "store.group: no such group"),
    (["--set", 'store.file_mode="0777"'], "store.file_mode"),
])
def test_twistd_bad_config_is_one_line(tmp_path, args, needle):
    """A bad config stops twistd with one line naming the key: no usage dump, no traceback."""
    r = subprocess.run([sys.executable, TWISTD, "-n", "--pidfile=", "mailhost", *args],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    err = (r.stderr + r.stdout).strip()
    assert needle in err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err


def test_twistd_lists_the_plugin(tmp_path):
    r = subprocess.run([sys.executable, TWISTD, "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert "mailhost" in r.stdout


def test_every_key_is_documented():
    """docs/configuration.md lists every key of the model, so the two cannot drift."""
    doc = open(os.path.join(ROOT, "docs", "configuration.md")).read()
    missing = [f"{section}.{key}" for section, values in cfg.as_dict(cfg.Config()).items()
               for key in values if f"`{section}.{key}`" not in doc]
    assert not missing, f"undocumented config keys: {missing}"


def test_restart_marks_match_what_reload_does():
    """docs/configuration.md marks *restart* exactly the keys SIGHUP cannot apply."""
    import re

    from mailhost.service import needs_restart

    doc = open(os.path.join(ROOT, "docs", "configuration.md")).read()
    rows = re.findall(r"^\| `([a-z0-9_]+\.[a-z0-9_]+)` \|.*\|$", doc, re.M)
    assert rows
    wrong = [key for key in rows
             if ("*restart*" in next(line for line in doc.splitlines()
                                     if line.startswith(f"| `{key}` |"))) != needs_restart(key)]
    assert not wrong, f"restart marks disagree with reload for: {wrong}"
