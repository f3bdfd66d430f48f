"""The import rules of the design that this package's move made: ``message`` and
``groupsync`` are leaves every part may use; SMTP reaches store and outbound only
through their interfaces and the two delivery targets; the store imports no protocol
and no outbound module."""

from __future__ import annotations

import ast
import pathlib

import mailhost

ROOT = pathlib.Path(mailhost.__file__).parent


def imports(path: pathlib.Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m == "mailhost" or m.startswith("mailhost.")}


def modules(*parts: str) -> list[pathlib.Path]:
    base = ROOT.joinpath(*parts)
    return [base] if base.suffix == ".py" else sorted(base.rglob("*.py"))


def test_message_and_groupsync_import_nothing_else_of_mailhost():
    for path in modules("message") + modules("groupsync.py"):
        assert all(m.startswith("mailhost.message") for m in imports(path)), path


def test_smtp_uses_store_and_outbound_through_interfaces_and_targets_only():
    # store.quota: the IQuotaStore interface (smtp/quota.py asks for usage through it).
    allowed = {"mailhost.store.interfaces", "mailhost.store.mailbox_target",
               "mailhost.store.quota",
               "mailhost.outbound.interfaces", "mailhost.outbound.queue_target"}
    for path in modules("smtp"):
        for m in imports(path):
            if m.startswith(("mailhost.store", "mailhost.outbound")):
                assert m in allowed, (path, m)


def test_store_imports_no_protocol_and_no_outbound():
    banned = ("mailhost.smtp", "mailhost.pop3", "mailhost.imap", "mailhost.outbound",
              "mailhost.service")
    for path in modules("store"):
        assert not any(m.startswith(banned) for m in imports(path)), path


def test_outbound_imports_no_store_implementation():
    # store.reader: the one message reader every consumer uses (issue 14, item 3).
    allowed = {"mailhost.store.interfaces", "mailhost.store.mailbox_target",
               "mailhost.store.reader"}
    for path in modules("outbound"):
        for m in imports(path):
            if m.startswith("mailhost.store"):
                assert m in allowed, (path, m)


def test_maildir_internals_are_private_to_the_store():
    # Only the store (MaildirStore, its public face) reaches into store._maildir.
    for path in ROOT.rglob("*.py"):
        if path.is_relative_to(ROOT / "store"):
            continue
        assert not any(m.startswith("mailhost.store._maildir") for m in imports(path)), path
