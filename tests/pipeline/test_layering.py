"""Import rules of the pipeline: only ``service.py`` builds it, no protocol imports a
stage, and the stages use no protocol (DESIGN.md)."""

from __future__ import annotations

from tests.message.test_layering import imports, modules


def test_no_protocol_imports_the_pipeline_package():
    for part in ("smtp", "pop3", "imap", "store", "outbound", "message", "mailauth", "dns"):
        for path in modules(part):
            assert not any(m.startswith("mailhost.pipeline") for m in imports(path)), path


def test_stages_import_only_message_mailauth_dns_and_milter():
    allowed = ("mailhost.pipeline", "mailhost.message", "mailhost.mailauth", "mailhost.dns",
               "mailhost.milter")
    for path in modules("pipeline"):
        assert all(m.startswith(allowed) for m in imports(path)), path


def test_the_milter_client_uses_no_protocol_and_no_stage():
    for path in modules("milter"):
        assert all(m.startswith(("mailhost.milter", "mailhost.message"))
                   for m in imports(path) if m.startswith("mailhost")), path
