"""NOTIFY and CONTEXT=SEARCH hear what Dovecot does to the Maildir they share (live, as
in tests/e2e/test_dovecot_sharing.py): an APPEND through Dovecot to another folder
arrives as ``* STATUS``, a flag Dovecot sets on the selected mailbox as a pushed FETCH
and as an ESEARCH update, and an SMTP delivery as EXISTS plus MessageNew's FETCH; all
without a command from the mailhost client."""

from __future__ import annotations

import imaplib
import re
import time

from tests.e2e.test_dovecot_sharing import message, pair  # noqa: F401

WITHIN = 10.0  # seconds for a change on disk to reach the client (the watch: ~1 s)


def _read(c: imaplib.IMAP4, pattern: bytes, limit: int = 20) -> list[bytes]:
    """Unsolicited lines up to one matching ``pattern`` (bounded in count and by the
    client's socket timeout)."""
    out = []
    deadline = time.monotonic() + WITHIN
    for _ in range(limit):
        line = c.readline()
        assert line, out
        out.append(line.rstrip(b"\r\n"))
        if re.search(pattern, line):
            assert time.monotonic() < deadline, out
            return out
    raise AssertionError(f"no {pattern!r} in {out!r}")


def _cmd(c: imaplib.IMAP4, line: bytes) -> list[bytes]:
    tag = line.split(b" ", 1)[0]
    c.send(line + b"\r\n")
    return _read(c, rb"^" + re.escape(tag) + rb" ", limit=50)


def test_notify_and_context_hear_dovecot(pair):  # noqa: F811
    pair.deliver("<first@remote.test>", "first")
    mh = pair.imap("mailhost")
    assert _cmd(mh, b"C1 CREATE Archive")[-1].startswith(b"C1 OK")
    assert _cmd(mh, b"S1 SELECT INBOX")[-1].startswith(b"S1 OK")
    out = _cmd(mh, b"U1 UID SEARCH RETURN (UPDATE) UNSEEN")
    assert out[0] == b'* ESEARCH (TAG "U1") UID ALL 1', out
    out = _cmd(mh, b"N1 NOTIFY SET (selected (MessageNew (UID FLAGS) MessageExpunge FlagChange)) "
                   b"(personal (MessageNew MessageExpunge FlagChange))")
    assert out[-1].startswith(b"N1 OK"), out

    dv = pair.imap("dovecot")
    typ, _ = dv.append("Archive", "", imaplib.Time2Internaldate(time.time()),
                       message("<second@remote.test>", "second"))
    assert typ == "OK"
    lines = _read(mh, rb"^\* STATUS Archive ")
    assert lines[-1] == b"* STATUS Archive (MESSAGES 1 UIDNEXT 2 UNSEEN 1)", lines

    dv.select("INBOX")
    typ, _ = dv.uid("STORE", "1", "+FLAGS", "(\\Seen)")
    assert typ == "OK"
    lines = _read(mh, rb'TAG "U1"')
    assert any(re.fullmatch(rb"\* 1 FETCH \(FLAGS \((\\Recent )?\\Seen\)\)", x) for x in lines), \
        lines
    assert lines[-1] == b'* ESEARCH (TAG "U1") UID REMOVEFROM (0 1)', lines

    pair.deliver("<third@remote.test>", "third")
    lines = _read(mh, rb'TAG "U1"')
    assert lines[0] == b"* 2 EXISTS", lines
    assert re.fullmatch(rb"\* 2 FETCH \(UID 2 FLAGS \((\\Recent)?\)\)", lines[-2]), lines
    assert lines[-1] == b'* ESEARCH (TAG "U1") UID ADDTO (0 2)', lines
    assert _cmd(mh, b"Z1 LOGOUT")[-1].startswith(b"Z1 OK")
    dv.logout()
    pair.assert_logs_clean()
