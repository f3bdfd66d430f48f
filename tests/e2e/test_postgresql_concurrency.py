"""Two nodes, ten IMAP clients, one folder set (issue 19): 5 clients on each node do
APPEND, STORE, EXPUNGE and COPY on the same folders for 30 s. No UID is handed out
twice (APPENDUID and COPYUID across both nodes), no command fails, and both nodes
end with the same view, UID for UID and flag for flag."""

from __future__ import annotations

import imaplib
import random
import re
import threading
import time

from tests.e2e.test_postgresql_nodes import PASSWORD, USER, nodes, upgraded

SECONDS = 30
CLIENTS_PER_NODE = 5


def client(host: str, port: int, seed: int, deadline: float, assigned: list, errors: list) -> None:
    rnd = random.Random(seed)
    m = imaplib.IMAP4(host, port, timeout=60)
    try:
        m.login(USER, PASSWORD)
        m.select("INBOX")
        n = 0
        while time.monotonic() < deadline and n < 2000:
            n += 1
            op = rnd.choice(["append", "append", "store", "expunge", "copy"])
            if op == "append":
                msg = b"Subject: %d-%d\r\n\r\nbody\r\n" % (seed, n)
                typ, data = m.append("INBOX", None, None, msg)
                got = re.search(rb"APPENDUID (\d+) (\d+)", data[0] or b"")
                if typ != "OK" or not got:
                    errors.append((op, typ, data))
                    continue
                assigned.append(("INBOX", int(got[2])))
                continue
            typ, data = m.uid("SEARCH", "ALL")
            uids = data[0].split() if typ == "OK" and data[0] else []
            if not uids:
                continue
            uid = rnd.choice(uids).decode()
            if op == "store":
                typ, data = m.uid("STORE", uid, "+FLAGS", rnd.choice([r"(\Seen)", r"(\Flagged)",
                                                                     "(work)"]))
            elif op == "expunge":
                typ, data = m.uid("STORE", uid, "+FLAGS", r"(\Deleted)")
                if typ == "OK":
                    typ, data = m.expunge()
            else:
                typ, data = m.uid("COPY", uid, "Archive")
                got = re.search(rb"COPYUID \d+ \S+ (\d+)", data[0] or b"")
                if typ == "OK" and got:
                    assigned.append(("Archive", int(got[1])))
                elif typ == "OK":  # the message was expunged meanwhile: nothing copied
                    pass
            if typ != "OK":
                errors.append((op, typ, data))
        m.logout()
    except Exception as e:  # noqa: BLE001 - every failure is reported by the test
        errors.append(("exception", repr(e), None))


def view(host: str, port: int) -> dict[str, list[tuple[int, frozenset[bytes]]]]:
    """Each folder's (UID, flags) pairs; \\Recent is each session's own, not compared."""
    m = imaplib.IMAP4(host, port, timeout=60)
    m.login(USER, PASSWORD)
    out = {}
    for folder in ("INBOX", "Archive"):
        m.select(folder, readonly=True)
        typ, data = m.uid("FETCH", "1:*", "(UID FLAGS)")
        assert typ == "OK"
        pairs = []
        for item in data:
            if not item:
                continue
            got = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)", item)
            assert got, item
            pairs.append((int(got[1]), frozenset(got[2].split()) - {b"\\Recent"}))
        out[folder] = sorted(pairs, key=lambda p: p[0])
    m.logout()
    return out


def test_ten_clients_on_two_nodes_never_share_a_uid_and_agree(mailhost_factory, pg_dsn):
    a, b = nodes(mailhost_factory, upgraded(pg_dsn))
    m = imaplib.IMAP4(a.host, a.ports["imap"], timeout=60)
    m.login(USER, PASSWORD)
    assert m.create("Archive")[0] == "OK"
    m.logout()
    assigned: list = []
    errors: list = []
    deadline = time.monotonic() + SECONDS
    threads = [threading.Thread(target=client, args=(node.host, node.ports["imap"], i * 2 + k,
                                                     deadline, assigned, errors))
               for i in range(CLIENTS_PER_NODE) for k, node in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SECONDS + 120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(assigned) > 50
    assert len(set(assigned)) == len(assigned), "a UID was handed out twice"
    time.sleep(1.0)  # the last NOTIFYs
    seen_a = view(a.host, a.ports["imap"])
    seen_b = view(b.host, b.ports["imap"])
    assert seen_a == seen_b
    assert seen_a["INBOX"] or seen_a["Archive"]
