"""The mail view sits on the store contract: it imports no store implementation and no
protocol, so it serves every store with IAccountListing (and the web UI may use it)."""

from __future__ import annotations

from tests.message.test_layering import imports, modules

ALLOWED = ("mailhost.mailview", "mailhost.store.interfaces", "mailhost.store.names",
           "mailhost.store.reader", "mailhost.outbound.client", "mailhost.outbound.envelope")


def test_mailview_uses_only_the_store_contract_and_the_relay_client():
    for path in modules("mailview"):
        for module in imports(path):
            assert module.startswith(ALLOWED), f"{path.name} imports {module}"
