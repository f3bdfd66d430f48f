"""Import rules of the envelope checks: only ``service.py`` builds them, no protocol
imports them, and they use no protocol (DESIGN.md)."""

from __future__ import annotations

from tests.message.test_layering import imports, modules


def test_no_part_but_service_imports_the_abuse_package():
    for part in ("smtp", "pop3", "imap", "store", "outbound", "message", "mailauth", "dns",
                 "pipeline"):
        for path in modules(part):
            assert not any(m.startswith("mailhost.abuse") for m in imports(path)), path


def test_checks_import_only_message_and_dns():
    allowed = ("mailhost.abuse", "mailhost.message", "mailhost.dns")
    for path in modules("abuse"):
        assert all(m.startswith(allowed) for m in imports(path)), path
