"""``mailhost alias``: the aliases file (``auth.backend = "passwd"``) edited by the same
commands that manage the PostgreSQL aliases table, and ``import`` from the file into
the table; run as subprocesses, as an admin does."""

from __future__ import annotations

import psycopg

from mailhost.auth.aliases import AliasesFile
from mailhost.auth.directory import UserDirectory
from mailhost.db import migrations
from tests.cli.test_user_cli import run, setup


def test_alias_commands_edit_the_aliases_file_and_keep_its_comments(tmp_path):
    setup(tmp_path)
    path = tmp_path / "data" / "aliases"
    path.parent.mkdir()
    path.write_text("# our lists\nsales@example.test: alice@example.test  # the boss\n")
    assert run(tmp_path, "user", "add", "alice@example.test", stdin="pw\n").returncode == 0
    r = run(tmp_path, "alias", "add", "sales@example.test", "bob@example.test",
            "alice@example.test")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "sales@example.test: alice@example.test, bob@example.test\n"
    assert run(tmp_path, "alias", "add", "@example.test", "alice@example.test").returncode == 0
    assert run(tmp_path, "alias", "list").stdout.splitlines() == [
        "@example.test: alice@example.test",
        "sales@example.test: alice@example.test, bob@example.test"]
    directory = UserDirectory(["example.test"], lambda: {"alice@example.test": []},
                              AliasesFile(str(path)).table)
    assert directory.expand("sales@example.test") == (["alice@example.test"], [])
    assert directory.lookup("anyone@example.test") == ["alice@example.test"]
    assert run(tmp_path, "alias", "add", "alice@example.test", "x@example.test").returncode == 1
    r = run(tmp_path, "alias", "del", "sales@example.test", "alice@example.test")
    assert r.stdout == "sales@example.test: bob@example.test\n", r.stderr
    assert run(tmp_path, "alias", "del", "@example.test").stdout == "deleted @example.test\n"
    assert path.read_text() == "# our lists\nsales@example.test: bob@example.test\n"
    assert run(tmp_path, "alias", "del", "nope@example.test").returncode == 1


def test_alias_import_copies_the_aliases_file_into_the_table(tmp_path, pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        migrations.upgrade(conn)
    (tmp_path / "c.toml").write_text(
        f'[server]\ndomains = ["example.test"]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[store]\nbackend = "postgresql"\ndsn = "{pg_dsn}"\n[auth]\nbackend = "postgresql"\n')
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "aliases").write_text(
        "sales@example.test: alice@example.test, bob@example.test\n@example.test: alice@example.test\n")
    r = run(tmp_path, "alias", "import")
    assert r.returncode == 0 and "imported 2 aliases" in r.stdout, r.stderr
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT name, target FROM aliases ORDER BY name, target").fetchall()
    assert rows == [("@example.test", "alice@example.test"),
                    ("sales@example.test", "alice@example.test"),
                    ("sales@example.test", "bob@example.test")]
