"""Import rules of the pipeline: only ``service.py`` builds it, no protocol imports a
stage, and the stages use no protocol (DESIGN.md)."""

from __future__ import annotations

from tests.message.test_layering import imports, modules


def test_no_protocol_imports_the_pipeline_package():
    for part in ("smtp", "pop3", "imap", "store", "outbound", "message", "mailauth", "dns"):
        for path in modules(part):
            assert not any(m.startswith("mailhost.pipeline") for m in imports(path)), path


def test_stages_import_only_message_mailauth_and_dns():
    allowed = ("mailhost.pipeline", "mailhost.message", "mailhost.mailauth", "mailhost.dns")
    for path in modules("pipeline"):
        assert all(m.startswith(allowed) for m in imports(path)), path
