"""hypothesis: the mail view's search matches a plain reference filter, whatever the
header text (non-ASCII subjects and names travel RFC 2047-encoded) and its case."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.failure import Failure

from mailhost.mailview import MessageQuery, StoreMailView
from mailhost.mailview.query import body_matches
from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.memory import MemoryStore

WORDS = ["Order", "order", "ÄPFEL", "äpfel", "Straße", "receipt", "café", "ÉTÉ", "x"]
words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join)
locals_ = st.sampled_from(["ann", "bob", "Cid", "dora"])
domains = st.sampled_from(["a.test", "B.test", "c.test"])
addresses = st.builds(lambda lp, d: f"{lp}@{d}", locals_, domains)
mails = st.lists(st.tuples(words, addresses, addresses, words), min_size=1, max_size=6)


def result_of(d):
    """The result of a Deferred that has fired (the memory store answers at once)."""
    out: list = []
    d.addBoth(out.append)
    assert out, "the Deferred did not fire synchronously"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def build(mails_):
    store = MemoryStore()
    for i, (subject, sender, rcpt, name) in enumerate(mails_):
        msg = EmailMessage()
        msg["From"] = f"{name} <{sender}>"
        msg["To"] = rcpt
        msg["Subject"] = subject
        msg.set_content("body")
        writer = store.new_message()
        writer.write(f"Return-Path: <{sender}>\r\n".encode()
                     + msg.as_bytes(policy=email.policy.SMTP))
        result_of(writer.commit([DeliveryTarget(rcpt.lower(), internal_date=1e9 + i)]))
    return StoreMailView(store)


def has(needle: str, *texts: str) -> bool:
    return any(needle.casefold() in t.casefold() for t in texts)


@settings(max_examples=60, deadline=None)
@given(mails, st.sampled_from(["sender", "recipient", "subject"]), words, st.integers(0, 4))
def test_header_search_matches_the_reference(mails_, field, needle_words, cut):
    view = build(mails_)
    needle = needle_words[cut:] or needle_words
    got = result_of(view.messages(MessageQuery(**{field: needle})))
    expected = []
    for i, (subject, sender, rcpt, name) in enumerate(mails_):
        texts = {"sender": (sender, f"{name} <{sender}>"), "recipient": (rcpt,),
                 "subject": (subject,)}[field]
        if has(needle, *texts):
            expected.append(i)
    assert [int(m.received.timestamp() - 1e9) for m in got] == sorted(expected, reverse=True)
    for m in got:
        subject, sender, rcpt, name = mails_[int(m.received.timestamp() - 1e9)]
        assert m.subject == subject and m.sender == sender and m.mailbox == rcpt.lower()


@given(words, words, st.booleans())
def test_body_and_text_filters(body, needle, as_text):
    query = MessageQuery(text=needle) if as_text else MessageQuery(body=needle)
    summary = result_of(build([("s", "a@a.test", "b@a.test", "n")]).messages())[0]
    matched = body_matches(query, summary, body)
    if as_text:
        assert matched == has(needle, body, "s", "a@a.test", "n <a@a.test>", "b@a.test")
    else:
        assert matched == has(needle, body)
