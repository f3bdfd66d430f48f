"""Import rules of the mail authentication parts: ``dns`` is a leaf (twisted.names
only); ``mailauth`` uses ``dns`` and nothing else of mailhost, so a pipeline stage in
any protocol's path can use it without an import cycle, and no protocol leaks in."""

from __future__ import annotations

from tests.message.test_layering import imports, modules


def test_dns_imports_nothing_else_of_mailhost():
    for path in modules("dns"):
        assert all(m.startswith("mailhost.dns") for m in imports(path)), path


def test_mailauth_imports_only_dns():
    for path in modules("mailauth"):
        assert all(m.startswith(("mailhost.mailauth", "mailhost.dns")) for m in imports(path)), path


def test_test_dns_uses_the_dns_interfaces_only():
    for m in imports(modules("testing", "dns.py")[0]):
        assert m in ("mailhost.dns.interfaces", "mailhost.dns.stub"), m
