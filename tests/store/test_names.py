"""The one validation of user names and aliases (issue 17, items 2 and 11)."""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from mailhost.store.memory import MemoryStore
from mailhost.store.names import MAX_LOCAL_BYTES, InvalidUserName, check_address

# Characters of local parts that hypothesis should meet often.
ADDRESS_CHARS = st.sampled_from(list("ab.@-+_:, \t\n\r\x00/%!#\"\\é") + ["\u2028", "\ud800"])


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=80), st.text(ADDRESS_CHARS, max_size=80),
                 st.builds(lambda a, b: a + "@" + b + ".test", st.text(ADDRESS_CHARS, max_size=70),
                           st.text(ADDRESS_CHARS, max_size=10))))
def test_accepted_names_are_servable(address):
    """Whatever passes fits every consumer: one '@', no separator of the passwd or
    aliases file, no whitespace or control character, at most 64 octets of local part."""
    try:
        local, domain = check_address(address)
    except InvalidUserName as e:
        assert "\n" not in str(e) and "\r" not in str(e)
        return
    assert address == f"{local}@{domain}" and address.count("@") == 1
    assert not set(address) & set(":,#/%!\\\" \t\r\n\x00")
    assert all(c.isprintable() for c in address)
    assert len(local.encode("utf-8")) <= MAX_LOCAL_BYTES and "." in domain


@pytest.mark.parametrize("user", ["a@b@example.test", "x" * 200 + "@example.test",
                                  "x,y@example.test"])
@pytest_twisted.ensureDeferred
async def test_store_refuses_what_the_cli_refuses(user):
    with pytest.raises(InvalidUserName):
        await defer.maybeDeferred(MemoryStore().open_account, user)


def test_canonical_folder_is_remembered_and_refusals_still_raise():
    """canonical_folder keeps what it worked out (issue 18); a refused name is refused
    every time, and a non-string is refused, not an unhashable TypeError."""
    from mailhost.store.interfaces import InvalidFolderName
    from mailhost.store.names import canonical_folder

    assert canonical_folder("inbox.Sent") == canonical_folder("inbox.Sent") == "INBOX.Sent"
    for bad in ("a..b", "a..b", ["INBOX"], "x/y"):
        with pytest.raises(InvalidFolderName):
            canonical_folder(bad)
