"""mailhost and Dovecot serve one Maildir at the same time, live (issue 13).

A real ``twistd -n mailhost`` and a private Dovecot (tests/dovecot_process.py) run
side by side over the **same** Maildir, not a copy, both as the unprivileged mail
user: mailhost through twistd's ``--uid/--gid`` as in production, Dovecot through
``mail_uid``. Real clients only: smtplib for delivery, imaplib and imapclient for IMAP.

What must hold, as a user moving between the two servers would see it:

1. a message delivered or appended through either server has the same UID,
   UIDVALIDITY, UIDNEXT, flags and body on both, also once expunges made the UIDs
   sparse;
2. a change made through one server reaches an IDLE client of the other: mailhost's
   within 1 s, Dovecot's at its next command;
3. ten clients, five per server, hammering two folders for 30 s leave both servers
   listing the same UIDs and flags, never show one UID with two messages, and leave
   ``doveadm force-resync`` nothing to repair;
4. everything either server created is the mail user's, files 0600 and dirs 0700.

Dovecot's log must stay free of errors and of complaints about our files: when
Dovecot repairs something it logs a warning, and that is a failure here.
"""

from __future__ import annotations

import hashlib
import imaplib
import json
import os
import random
import re
import shutil
import smtplib
import stat
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

import pytest
from imapclient import IMAPClient

from tests.dovecot_process import (
    Dovecot,
    MailUser,
    check_mail_user_can_run_mailhost,
    mail_user,
    world_dir,
)
from tests.mailhost_process import MailHostProcess

USER, PASSWORD = "alice@example.test", "alice-pw"
HOST = "127.0.0.1"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PUSH_WITHIN = 1.0  # seconds: the bound for IDLE on the mailhost side
MAILHOST_TROUBLE = re.compile(r"#(error|critical)\]|Traceback|Unhandled Error")

# --------------------------------------------------------------------- harness


@dataclass
class SharedPair:
    """A running mailhost and a running Dovecot over one Maildir."""

    world: str
    user: MailUser
    mh: MailHostProcess
    dv: Dovecot

    @property
    def mail_root(self) -> str:
        return os.path.join(self.mh.data_dir, "mail")

    @property
    def mail_home(self) -> str:
        """The user's Maildir (INBOX; folders are ``.Name`` in it)."""
        return self.mh.maildir(USER)

    @property
    def ports(self) -> dict[str, int]:
        return {"mailhost": self.mh.ports["imap"], "dovecot": self.dv.port}

    def imap(self, server: str) -> imaplib.IMAP4:
        c = imaplib.IMAP4(HOST, self.ports[server], timeout=30)
        c.login(USER, PASSWORD)
        return c

    def idle_client(self, server: str, folder: str = "INBOX") -> IMAPClient:
        c = IMAPClient(HOST, port=self.ports[server], ssl=False, timeout=30)
        c.login(USER, PASSWORD)
        c.select_folder(folder)
        return c

    def deliver(self, msgid: str, subject: str = "delivered") -> None:
        """Deliver one message through mailhost's SMTP (port 25's role)."""
        with smtplib.SMTP(HOST, self.mh.ports["smtp"], timeout=30) as s:
            s.sendmail("sender@remote.test", [USER], message(msgid, subject))

    def mailhost_trouble(self) -> list[str]:
        """Errors in mailhost's log: crashed commands, failed listeners, tracebacks."""
        with open(self.mh.log_path, errors="replace") as f:
            return [line for line in f.read().splitlines() if MAILHOST_TROUBLE.search(line)]

    def assert_logs_clean(self) -> None:
        """Neither server logged an error; Dovecot repaired nothing of ours."""
        trouble = ([f"Dovecot: {line}" for line in self.dv.trouble()]
                   + [f"mailhost: {line}" for line in self.mailhost_trouble()])
        assert not trouble, "the servers logged trouble:\n" + "\n".join(trouble[:40])


@pytest.fixture
def pair():
    """mailhost (twistd --uid/--gid mail) and Dovecot (mail_uid mail) on one Maildir.

    Everything lives in a fresh world-traversable dir under /tmp, removed afterwards;
    the servers are stopped by PID."""
    why = check_mail_user_can_run_mailhost()
    if why is not None:
        pytest.fail(why)
    for tool in ("dovecot", "doveadm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (CI: apt-get install -y dovecot-imapd)")
    user = mail_user()
    world = world_dir("mailhost-share-")
    old_umask = os.umask(0o022)  # the issue asks for 0600/0700 under umask 022
    mh = dv = None
    try:
        mh = MailHostProcess(os.path.join(world, "mailhost"), users={USER: PASSWORD},
                             uid=user.uid, gid=user.gid)
        mh.configure()
        mh.start()
        # mailhost makes the user's Maildir (an IMAP login and SELECT), so Dovecot
        # finds it there rather than creating it with modes of its own choosing.
        c = imaplib.IMAP4(HOST, mh.ports["imap"], timeout=30)
        c.login(USER, PASSWORD)
        c.select("INBOX")
        c.logout()
        dv = Dovecot(os.path.join(mh.data_dir, "mail"), {USER: PASSWORD}, share=True,
                     workdir=os.path.join(world, "dovecot")).start()
        yield SharedPair(world, user, mh, dv)
    finally:
        os.umask(old_umask)
        if dv is not None:
            dv.stop()
        if mh is not None:
            mh.stop()
        shutil.rmtree(world, ignore_errors=True)


# --------------------------------------------------------------------- helpers


def message(msgid: str, subject: str, lines: int = 5) -> bytes:
    rnd = random.Random(msgid)
    body = "".join(f"line {i} {rnd.getrandbits(64):016x}\r\n" for i in range(lines))
    return (f"From: sender@remote.test\r\nTo: {USER}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{msgid}>\r\nDate: Fri, 04 Dec 2026 20:00:00 +0000\r\n\r\n"
            f"{body}").encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_MSGID = re.compile(rb"(?im)^Message-ID:\s*(<[^>\r\n]*>)")
_CODE = re.compile(rb"\[(APPENDUID|COPYUID) ([^\]]*)\]")


def flags_of(head: bytes) -> frozenset[str]:
    m = _FLAGS.search(head)
    if m is None:
        return frozenset()
    return frozenset(f for f in m.group(1).decode().split() if f != "\\Recent")


def fetch_items(data: list) -> list[tuple[bytes, bytes | None]]:
    """imaplib FETCH data as (response head, literal or None) pairs."""
    out = []
    for item in data:
        if isinstance(item, tuple):
            out.append((item[0], item[1]))
        elif isinstance(item, bytes) and item not in (b")",) and item.strip():
            out.append((item, None))
    return out


@dataclass(frozen=True)
class Folder:
    """One server's view of a folder: UIDVALIDITY, UIDNEXT and uid -> (flags, size,
    Message-ID, body hash)."""

    uidvalidity: int
    uidnext: int
    messages: dict[int, tuple[frozenset[str], int, str, str]]

    def uids(self) -> list[int]:
        return sorted(self.messages)


def folder_state(c: imaplib.IMAP4, folder: str, bodies: bool = True) -> Folder:
    typ, data = c.status(folder, "(UIDVALIDITY UIDNEXT MESSAGES)")
    assert typ == "OK", (folder, data)
    status = data[0].decode()
    validity = int(re.search(r"UIDVALIDITY (\d+)", status).group(1))
    uidnext = int(re.search(r"UIDNEXT (\d+)", status).group(1))
    typ, data = c.select(folder, readonly=True)
    assert typ == "OK", (folder, data)
    messages: dict[int, tuple[frozenset[str], int, str, str]] = {}
    if data != [b"0"]:
        what = "(UID FLAGS RFC822.SIZE BODY.PEEK[])" if bodies else "(UID FLAGS)"
        typ, data = c.uid("FETCH", "1:*", what)
        assert typ == "OK", (folder, data)
        for head, literal in fetch_items(data):
            m = _UID.search(head)
            if m is None:
                continue
            size = _SIZE.search(head)
            mid = _MSGID.search(literal or b"")
            messages[int(m.group(1))] = (
                flags_of(head), int(size.group(1)) if size else -1,
                mid.group(1).decode() if mid else "", sha(literal) if literal else "")
    c.close()
    return Folder(validity, uidnext, messages)


def short(items: list, n: int = 30) -> str:
    return str(items) if len(items) <= n else f"{items[:n]}... ({len(items)} in all)"


def views(pair: SharedPair, folders: tuple[str, ...], bodies: bool = True
          ) -> dict[str, dict[str, Folder]]:
    """Each server's view of ``folders``, each from a fresh session."""
    out = {}
    for server in ("mailhost", "dovecot"):
        c = pair.imap(server)
        try:
            out[server] = {f: folder_state(c, f, bodies) for f in folders}
        finally:
            c.logout()
    return out


def on_disk(maildir: str, uids: list[int]) -> str:
    """What the Maildir says about these UIDs: their dovecot-uidlist record and file."""
    records = {}
    try:
        with open(os.path.join(maildir, "dovecot-uidlist"), errors="replace") as f:
            for line in f.read().splitlines()[1:]:
                uid, _, name = line.partition(" :")
                if uid.split(" ")[0].isdigit():
                    records[int(uid.split(" ")[0])] = name
    except OSError as e:
        return f"(no dovecot-uidlist: {e})"
    files = {}
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(maildir, sub)):
            files.setdefault(name.split(":")[0], []).append(f"{sub}/{name}")
    out = []
    for uid in uids[:8]:
        base = records.get(uid)
        where = files.get(base, ["no file"]) if base else []
        out.append(f"uid {uid}: " + (f"record :{base}, {', '.join(where)}" if base
                                     else "no record in dovecot-uidlist"))
    return "\n    ".join(out)


def disagreements(seen: dict[str, dict[str, Folder]], mail_home: str | None = None
                  ) -> list[str]:
    """Where mailhost's and Dovecot's views differ, one line per kind of difference
    (with what the Maildir under ``mail_home`` says about the UIDs in question)."""
    problems = []
    for f in seen["mailhost"]:
        mh, dv = seen["mailhost"][f], seen["dovecot"][f]
        if (mh.uidvalidity, mh.uidnext) != (dv.uidvalidity, dv.uidnext):
            problems.append(f"{f}: UIDVALIDITY/UIDNEXT mailhost {mh.uidvalidity}/{mh.uidnext}, "
                            f"Dovecot {dv.uidvalidity}/{dv.uidnext}")
        if mh.uids() != dv.uids():
            problems.append(f"{f}: UIDs mailhost {short(mh.uids())}, Dovecot {short(dv.uids())}")
        diff = {uid: (mh.messages.get(uid), dv.messages.get(uid))
                for uid in sorted(set(mh.messages) | set(dv.messages))
                if mh.messages.get(uid) != dv.messages.get(uid)}
        if diff:
            problems.append(f"{f}: uid -> (mailhost, Dovecot) as (flags, size, Message-ID, "
                            f"body hash), {len(diff)} differ:\n  "
                            + "\n  ".join(f"{u}: {d}" for u, d in list(diff.items())[:12]))
        odd = sorted(set(mh.messages) ^ set(dv.messages))
        if odd and mail_home is not None:
            maildir = mail_home if f == "INBOX" else os.path.join(mail_home, "." + f)
            problems.append(f"{f}: on disk now:\n    {on_disk(maildir, odd)}")
    return problems


def compare(pair: SharedPair, folders: tuple[str, ...], bodies: bool = True,
            settle: float = 5.0) -> dict[str, Folder]:
    """Both servers' views of ``folders``; asserts they are equal.

    A fresh session on each server syncs the folder at SELECT, so the views should
    agree at once; ``settle`` seconds are allowed only for background work still in
    flight, and the last difference is what the assertion shows."""
    deadline = time.monotonic() + settle
    while True:
        seen = views(pair, folders, bodies)
        problems = disagreements(seen, pair.mail_home)
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not problems, "the servers disagree:\n" + "\n".join(problems)
    return seen["mailhost"]


def uid_of(state: Folder, msgid: str) -> int:
    found = [uid for uid, m in state.messages.items() if m[2] == f"<{msgid}>"]
    assert len(found) == 1, (msgid, state)
    return found[0]


def append(c: imaplib.IMAP4, folder: str, flags: str | None, data: bytes) -> tuple[int, int]:
    """APPEND; returns (UIDVALIDITY, UID) from APPENDUID (both servers offer UIDPLUS)."""
    typ, resp = c.append(folder, flags, None, data)
    assert typ == "OK", resp
    m = _CODE.search(resp[0])
    assert m is not None and m.group(1) == b"APPENDUID", resp
    validity, uid = m.group(2).split()
    return int(validity), int(uid)


def expunge_uid(c: imaplib.IMAP4, uid: int) -> None:
    typ, data = c.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
    assert typ == "OK", data
    typ, data = c.uid("EXPUNGE", str(uid))
    assert typ == "OK", data


# ---------------------------------------------------- 1. same UIDs both ways


def test_delivered_and_appended_mail_looks_the_same_on_both_servers(pair):
    """SMTP delivery through mailhost and APPEND through Dovecot (and through mailhost)
    give each message one UID, its flags and its body on both servers, and the same
    UIDVALIDITY and UIDNEXT; still so after expunges on either side."""
    for i in range(3):
        pair.deliver(f"smtp-{i}@sharing.test")
    dv = pair.imap("dovecot")
    dv_appended = [append(dv, "INBOX", "(\\Seen $Label1)", message(f"dv-{i}@sharing.test", "dv"))
                   for i in range(2)]
    dv.logout()
    mh = pair.imap("mailhost")
    mh_appended = append(mh, "INBOX", "(\\Flagged)", message("mh-0@sharing.test", "mh"))
    mh.logout()

    state = compare(pair, ("INBOX",))["INBOX"]
    assert len(state.messages) == 6
    # APPENDUID named the UID and UIDVALIDITY both servers now show for that message.
    for i, (validity, uid) in enumerate(dv_appended):
        assert (state.uidvalidity, uid_of(state, f"dv-{i}@sharing.test")) == (validity, uid)
        assert state.messages[uid][0] == {"\\Seen", "$Label1"}
        assert state.messages[uid][3] == sha(message(f"dv-{i}@sharing.test", "dv"))
    assert (state.uidvalidity, uid_of(state, "mh-0@sharing.test")) == mh_appended

    # Expunge through each server; the UIDs are no longer dense, then add more mail.
    dv = pair.imap("dovecot")
    dv.select("INBOX")
    expunge_uid(dv, uid_of(state, "smtp-1@sharing.test"))
    dv.logout()
    mh = pair.imap("mailhost")
    mh.select("INBOX")
    expunge_uid(mh, dv_appended[0][1])
    mh.logout()
    pair.deliver("smtp-3@sharing.test")
    dv = pair.imap("dovecot")
    late = append(dv, "INBOX", "(\\Answered)", message("dv-late@sharing.test", "dv"))
    dv.logout()

    after = compare(pair, ("INBOX",))["INBOX"]
    assert len(after.messages) == 6
    assert after.uidvalidity == state.uidvalidity
    assert "<smtp-1@sharing.test>" not in {m[2] for m in after.messages.values()}
    assert (after.uidvalidity, uid_of(after, "dv-late@sharing.test")) == late
    assert after.uidnext > max(after.uids())
    # Messages that survived kept their UIDs.
    for uid in set(state.uids()) & set(after.uids()):
        assert after.messages[uid][2:] == state.messages[uid][2:]
    pair.assert_logs_clean()


def test_keyword_letter_dovecot_assigned_is_not_given_to_another_keyword(pair):
    """Regression: mailhost read a folder's dovecot-keywords once. After Dovecot gave
    $Work the letter ``a`` (file ``…:2,a``), mailhost showed no $Work, and its next new
    keyword ($Later) took ``a`` too and rewrote dovecot-keywords as ``0 $Later``: the
    message Dovecot flagged $Work turned into $Later on both servers."""
    for i in range(2):
        pair.deliver(f"kw-{i}@sharing.test")
    dv = pair.imap("dovecot")
    dv.select("INBOX")
    uids = uids_by_msgid(dv)
    assert dv.uid("STORE", str(uids["<kw-0@sharing.test>"]), "+FLAGS", "($Work)")[0] == "OK"
    dv.logout()
    mh = pair.imap("mailhost")
    mh.select("INBOX")
    assert mh.uid("STORE", str(uids["<kw-1@sharing.test>"]), "+FLAGS", "($Later)")[0] == "OK"
    mh.logout()
    state = compare(pair, ("INBOX",), bodies=False)["INBOX"]
    assert state.messages[uids["<kw-0@sharing.test>"]][0] == {"$Work"}
    assert state.messages[uids["<kw-1@sharing.test>"]][0] == {"$Later"}
    with open(os.path.join(pair.mail_home, "dovecot-keywords")) as f:
        names = {line.split(" ", 1)[1] for line in f.read().splitlines() if " " in line}
    assert names == {"$Work", "$Later"}
    pair.assert_logs_clean()


# --------------------------------------------------------- 2. IDLE both ways


def wait_for(c: IMAPClient, want, within: float) -> tuple[list, float]:
    """IDLE responses until ``want(responses)`` holds or ``within`` seconds passed."""
    t0 = time.monotonic()
    got: list = []
    while True:
        left = within - (time.monotonic() - t0)
        if want(got) or left <= 0:
            return got, time.monotonic() - t0
        got.extend(c.idle_check(timeout=max(left, 0.01)))


def fetch_flags(responses: list, seq: int) -> set[bytes] | None:
    """The flags of the last untagged FETCH for ``seq`` in IMAPClient responses."""
    flags = None
    for r in responses:
        if len(r) >= 3 and r[0] == seq and r[1] == b"FETCH":
            items = r[2]
            for i in range(0, len(items) - 1, 2):
                if items[i] == b"FLAGS":
                    flags = {f.decode() if isinstance(f, bytes) else f for f in items[i + 1]}
    return flags


def has(responses: list, seq: int, kind: bytes) -> bool:
    return any(len(r) >= 2 and r[0] == seq and r[1] == kind for r in responses)


def uids_by_msgid(c: imaplib.IMAP4) -> dict[str, int]:
    """Message-ID -> UID in the selected folder, as this server numbers it."""
    typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    out = {}
    for head, literal in fetch_items(data):
        m, mid = _UID.search(head), _MSGID.search(literal or b"")
        if m and mid:
            out[mid.group(1).decode()] = int(m.group(1))
    return out


def seqs_by_msgid(c: IMAPClient) -> dict[str, int]:
    """Message-ID -> sequence number for an IMAPClient's selected folder."""
    key = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"
    out = {}
    uids = c.search(["ALL"])
    if not uids:
        return {}
    for data in c.fetch(uids, [key.replace(b"BODY", b"BODY.PEEK").decode()]).values():
        mid = _MSGID.search(data.get(key, b""))
        if mid:
            out[mid.group(1).decode()] = data[b"SEQ"]
    return out


def exists_at_least(responses: list, n: int) -> bool:
    """An EXISTS of ``n`` or more: the order in which a server reports an expunge and a
    new message that happened close together is its own business."""
    return any(len(r) >= 2 and r[1] == b"EXISTS" and r[0] >= n for r in responses)


def test_idle_hears_changes_made_through_the_other_server(pair):
    """mailhost's IDLE client gets FETCH FLAGS / EXPUNGE / EXISTS within 1 s of a change
    made through Dovecot; Dovecot's IDLE client sees mailhost's changes by its next
    command (NOOP).

    Each side names messages by its own UIDs and sequence numbers, found by Message-ID,
    so this test measures only the pushing; test 1 checks that the numbers agree."""
    for i in range(4):
        pair.deliver(f"idle-{i}@sharing.test")
    failures = []

    # -- mailhost IDLE client, changes through Dovecot: pushed within 1 s.
    watcher = pair.idle_client("mailhost")
    seq = seqs_by_msgid(watcher)
    actor = pair.imap("dovecot")
    actor.select("INBOX")
    uid = uids_by_msgid(actor)
    assert len(seq) == len(uid) == 4, (seq, uid)
    watcher.idle()
    try:
        target = seq["<idle-0@sharing.test>"]
        typ, data = actor.uid("STORE", str(uid["<idle-0@sharing.test>"]), "+FLAGS",
                              "(\\Seen $Work)")
        assert typ == "OK", data
        got, took = wait_for(
            watcher, lambda g: (fetch_flags(g, target) or set()) >= {"\\Seen", "$Work"},
            PUSH_WITHIN)
        if (fetch_flags(got, target) or set()) < {"\\Seen", "$Work"}:
            failures.append(f"mailhost IDLE: no '* {target} FETCH (FLAGS (\\Seen $Work))' within "
                            f"{PUSH_WITHIN} s of Dovecot's STORE; got {got}")
        target = seq["<idle-1@sharing.test>"]
        expunge_uid(actor, uid["<idle-1@sharing.test>"])
        got, took = wait_for(watcher, lambda g: has(g, target, b"EXPUNGE"), PUSH_WITHIN)
        if not has(got, target, b"EXPUNGE"):
            failures.append(f"mailhost IDLE: no '* {target} EXPUNGE' within {PUSH_WITHIN} s of "
                            f"Dovecot's UID EXPUNGE; got {got}")
        append(actor, "INBOX", "(\\Flagged)", message("idle-dv@sharing.test", "from dovecot"))
        got, took = wait_for(watcher, lambda g: exists_at_least(g, 4), PUSH_WITHIN)
        if not exists_at_least(got, 4):
            failures.append(f"mailhost IDLE: no '* 4 EXISTS' within {PUSH_WITHIN} s of "
                            f"Dovecot's APPEND; got {got}")
    finally:
        watcher.idle_done()
        watcher.logout()
        actor.logout()

    # -- Dovecot IDLE client, changes through mailhost: seen by its next command.
    watcher = pair.idle_client("dovecot")
    seq = seqs_by_msgid(watcher)  # idle-0, idle-2, idle-3, idle-dv
    actor = pair.imap("mailhost")
    actor.select("INBOX")
    uid = uids_by_msgid(actor)
    watcher.idle()
    try:
        flagged, gone = seq["<idle-2@sharing.test>"], seq["<idle-3@sharing.test>"]
        typ, data = actor.uid("STORE", str(uid["<idle-2@sharing.test>"]), "+FLAGS",
                              "(\\Answered $Later)")
        assert typ == "OK", data
        expunge_uid(actor, uid["<idle-3@sharing.test>"])
        pair.deliver("idle-mh@sharing.test")
        got, _ = wait_for(watcher, lambda g: False, 0.3)  # whatever IDLE pushes by itself
        _, after_idle = watcher.idle_done()
        got += list(after_idle)
        got += list(watcher.noop()[1])
        if (fetch_flags(got, flagged) or set()) < {"\\Answered", "$Later"}:
            failures.append(f"Dovecot: no '* {flagged} FETCH (FLAGS (\\Answered $Later))' by "
                            f"NOOP after mailhost's STORE; got {got}")
        if not has(got, gone, b"EXPUNGE"):
            failures.append(f"Dovecot: no '* {gone} EXPUNGE' by NOOP after mailhost's expunge; "
                            f"got {got}")
        if not exists_at_least(got, len(seq)):
            failures.append(f"Dovecot: no '* {len(seq)} EXISTS' by NOOP after mailhost's "
                            f"delivery; got {got}")
    finally:
        watcher.logout()
        actor.logout()
    assert not failures, "\n".join(failures)
    compare(pair, ("INBOX",))
    pair.assert_logs_clean()


# ------------------------------------------------------------------ 3. stress

STRESS_FOLDERS = ("INBOX", "Shared")
STRESS_SECONDS = 30.0
STRESS_CLIENTS = 5  # per server
#: What Dovecot logs when it gives a message a new UID because a listing of its missed
#: the file while another program renamed it (see the stress test).
DOVECOT_RENUMBERED = re.compile(r"Dovecot complained: .*Warning: .*(?:Duplicate file entry "
                                r"at line \d+: .* \(uid \d+ -> \d+\)|Expunged message "
                                r"reappeared, giving a new UID)")
EXPECTED_NO = re.compile(rb"EXPUNGEISSUED|expunged|no longer exist", re.I)


def stress_client(server: str, port: int, n: int, deadline: float) -> dict:
    """One client process: APPEND/STORE/EXPUNGE/COPY/UID FETCH on the shared folders
    until ``deadline`` (wall clock), recording every (folder, UIDVALIDITY, UID) ->
    (Message-ID, body hash) it saw and every unexpected answer. Bounded in time and in
    count; never raises (a failure is data for the parent)."""
    rng = random.Random(f"{server}-{n}")
    seen: dict[tuple[str, int, int], set[tuple[str, str]]] = defaultdict(set)
    appended: dict[str, str] = {}
    errors: list[str] = []
    ops: dict[str, int] = defaultdict(int)
    c = None
    k = 0
    for _round in range(10_000):
        if time.time() > deadline:
            break
        try:
            if c is None:
                c = imaplib.IMAP4(HOST, port, timeout=30)
                c.login(USER, PASSWORD)
            folder = rng.choice(STRESS_FOLDERS)
            other = [f for f in STRESS_FOLDERS if f != folder][0]
            typ, data = c.select(folder)
            if typ != "OK":
                errors.append(f"SELECT {folder}: {typ} {data}")
                continue
            exists = int(data[0])
            validity = int(c.response("UIDVALIDITY")[1][0])
            known: dict[int, str] = {}  # uid -> Message-ID in this folder, as last fetched
            for _op in range(rng.randint(3, 8)):
                if time.time() > deadline:
                    break
                if not known:  # nothing to act on yet (or this server shows nothing)
                    op = rng.choice(["FETCH", "APPEND"])
                else:
                    op = rng.choices(["FETCH", "APPEND", "STORE", "EXPUNGE", "COPY", "BODY"],
                                     [25, 20, 15, 15, 13, 12])[0]
                if op == "APPEND" and exists >= 40:
                    op = "EXPUNGE" if known else "FETCH"  # keep the folders small
                if op in ("FETCH", "BODY"):
                    # Drop FETCH data a NO left behind (imaplib keeps it for the next call).
                    c.response("FETCH")
                if op == "FETCH":
                    typ, data = c.uid("FETCH", "1:*",
                                      "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                    if typ == "NO":  # [EXPUNGEISSUED]: the rest of the answer still counts
                        fetched = [d for d in c.response("FETCH")[1] if d is not None]
                    else:
                        fetched = data
                    if typ in ("OK", "NO"):
                        known.clear()
                        for head, literal in fetch_items(fetched):
                            m, mid = _UID.search(head), _MSGID.search(literal or b"")
                            if m and mid and b"HEADER.FIELDS" in head:
                                known[int(m.group(1))] = mid.group(1).decode()
                                seen[(folder, validity, int(m.group(1)))].add(
                                    (mid.group(1).decode(), ""))
                        exists = len(known)
                elif op == "APPEND":
                    k += 1
                    msgid = f"{server}-{n}-{k}@stress.test"
                    body = message(msgid, "stress", lines=rng.randint(1, 30))
                    appended[f"<{msgid}>"] = f"{sha(body)}/{len(body)}"
                    flags = rng.choice([None, "(\\Seen)", "(\\Flagged $Stress)"])
                    typ, data = c.append(folder, flags, None, body)
                    exists += 1
                    m = _CODE.search(data[0] or b"") if typ == "OK" else None
                    if m is not None and m.group(1) == b"APPENDUID":
                        v, uid = (int(x) for x in m.group(2).split())
                        seen[(folder, v, uid)].add((f"<{msgid}>", appended[f"<{msgid}>"]))
                elif op == "STORE":
                    uid = rng.choice(list(known))
                    sign = rng.choice(["+FLAGS", "-FLAGS"])
                    typ, data = c.uid("STORE", str(uid), sign,
                                      rng.choice(["(\\Seen)", "(\\Flagged)", "($Stress)",
                                                  "(\\Answered $Other)"]))
                elif op == "EXPUNGE":
                    uid = rng.choice(list(known))
                    typ, data = c.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
                    if typ == "OK":
                        typ, data = c.uid("EXPUNGE", str(uid))
                    known.pop(uid, None)
                    exists -= 1
                elif op == "COPY":
                    uid = rng.choice(list(known))
                    # imaplib's uid() hides the tagged answer (it returns pending
                    # untagged FETCH data instead), and COPYUID is in the tagged answer.
                    typ, data = c._simple_command("UID", "COPY", str(uid), other)
                    m = _CODE.search(data[-1] or b"") if typ == "OK" else None
                    if m is not None and m.group(1) == b"COPYUID":
                        v, src, dst = m.group(2).split()
                        if src.decode() == str(uid) and dst.isdigit():
                            seen[(other, int(v), int(dst))].add((known[uid], ""))
                else:  # BODY: a few whole messages, to hash
                    some = rng.sample(list(known), min(3, len(known)))
                    typ, data = c.uid("FETCH", ",".join(map(str, some)), "(UID BODY.PEEK[])")
                    if typ == "OK":
                        for head, literal in fetch_items(data):
                            m, mid = _UID.search(head), _MSGID.search(literal or b"")
                            if m and mid and b"BODY[]" in head:
                                seen[(folder, validity, int(m.group(1)))].add(
                                    (mid.group(1).decode(), f"{sha(literal)}/{len(literal)}"))
                ops[op] += 1
                if typ != "OK":
                    text = b" ".join(d for d in data if isinstance(d, bytes))
                    if not (typ == "NO" and op in ("STORE", "COPY", "FETCH", "BODY", "EXPUNGE")
                            and EXPECTED_NO.search(text)):
                        errors.append(f"{op} in {folder}: {typ} {text[:200]!r}")
        except (imaplib.IMAP4.error, OSError) as e:
            errors.append(f"{type(e).__name__}: {e}"[:300])
            try:
                if c is not None:
                    c.shutdown()
            except OSError:
                pass
            c = None
            time.sleep(0.2)
    if c is not None:
        try:
            c.logout()
        except (imaplib.IMAP4.error, OSError) as e:
            errors.append(f"LOGOUT: {e}")
    return {"client": f"{server}-{n}",
            "seen": [[*key, sorted(obs)] for key, obs in seen.items()],
            "appended": appended, "errors": errors[:200] + [f"... {len(errors)} in all"] * (
                len(errors) > 200), "ops": dict(ops)}


def run_stress_clients(pair: SharedPair) -> list[dict]:
    """Run STRESS_CLIENTS client processes per server until a common deadline.

    Separate interpreters (``python -m`` this module), not forks: a fork of the pytest
    process can inherit a lock some thread of it holds and hang. Each writes its
    result as JSON; stragglers are killed by PID."""
    deadline = time.time() + 3.0 + STRESS_SECONDS  # 3 s for the interpreters to start
    out_dir = os.path.join(pair.world, "stress")
    os.makedirs(out_dir)
    procs = []
    for n in range(STRESS_CLIENTS):
        for server, port in pair.ports.items():
            out = os.path.join(out_dir, f"{server}-{n}.json")
            procs.append((out, subprocess.Popen(
                [sys.executable, "-m", "tests.e2e.test_dovecot_sharing", server, str(port),
                 str(n), repr(deadline), out], cwd=REPO, stdin=subprocess.DEVNULL)))
    results = []
    for out, proc in procs:
        try:
            proc.wait(max(deadline - time.time(), 0) + 45)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        try:
            with open(out) as f:
                results.append(json.load(f))
        except (OSError, ValueError) as e:
            results.append({"client": os.path.basename(out)[:-5], "seen": [], "appended": {},
                            "ops": {},
                            "errors": [f"client process exited {proc.returncode}: {e}"]})
    return results


def force_resync(pair: SharedPair) -> list[str]:
    """Run ``doveadm force-resync`` on every folder; returns the lines it or Dovecot
    logged that report a repair or an error."""
    before = len(pair.dv.log())
    r = pair.dv.doveadm("force-resync", "-u", USER, "*")
    out = (r.stdout + r.stderr).strip()
    lines = pair.dv.trouble(pair.dv.log()[before:]) + pair.dv.trouble(out)
    if r.returncode != 0:
        lines.append(f"doveadm force-resync exited {r.returncode}: {out}")
    # Anything doveadm says on a clean mailbox is a finding too.
    lines += [line for line in out.splitlines() if line not in lines]
    return lines


def test_ten_clients_on_two_servers_agree(pair):
    """5 clients per server, 30 s of APPEND/STORE/EXPUNGE/COPY/UID FETCH on two folders:
    both servers list the same UIDs and flags, no UID ever named two messages, no
    unexpected error, and force-resync finds nothing to repair."""
    c = pair.imap("mailhost")
    assert c.create("Shared")[0] == "OK"
    c.logout()
    for i in range(10):
        pair.deliver(f"seed-{i}@sharing.test")
    dv = pair.imap("dovecot")
    for i in range(10):
        append(dv, "Shared", None, message(f"seed-s{i}@sharing.test", "seed"))
    dv.logout()

    results = run_stress_clients(pair)

    errors = [f"{r['client']}: {e}" for r in results for e in r["errors"]]
    ops = {r["client"]: r["ops"] for r in results}
    appended: dict[str, str] = {}
    seen: dict[tuple, set[tuple[str, str]]] = defaultdict(set)
    who: dict[tuple, str] = {}  # (folder, UIDVALIDITY, UID, Message-ID, digest) -> first client
    for r in results:
        appended.update(r["appended"])
        for folder, validity, uid, obs in r["seen"]:
            seen[(folder, validity, uid)].update(map(tuple, obs))
            for mid, digest in obs:
                who.setdefault((folder, validity, uid, mid, digest), r["client"])
    reused = {}
    wrong_body = {}
    for key, obs in seen.items():
        if len({mid for mid, _ in obs}) > 1:
            reused[key] = sorted(obs)
        for mid, digest in obs:
            if digest and mid in appended and appended[mid] != digest:
                wrong_body[key] = (mid, f"{who[(*key, mid, digest)]} got {digest}",
                                   f"appended {appended[mid]}")

    # Both servers list the same; a fresh SELECT syncs, a few seconds settle the rest.
    settle = time.monotonic() + 5.0
    while True:
        final = views(pair, STRESS_FOLDERS, bodies=False)
        disagree = disagreements(final, pair.mail_home)
        if not disagree or time.monotonic() > settle:
            break
        time.sleep(0.5)
    # What the clients saw agrees with the end state: a UID still listed names the
    # message every client saw under that UID.
    for server, folders in final.items():
        for folder, state in folders.items():
            for uid, (_, _, mid, _) in state.messages.items():
                names = {m for m, _ in seen.get((folder, state.uidvalidity, uid), ())}
                if mid and names and names != {mid}:
                    reused[(folder, state.uidvalidity, uid, f"{server} at the end")] = sorted(
                        names | {mid})
    resync = force_resync(pair)
    after = views(pair, STRESS_FOLDERS, bodies=False)

    report = []
    if errors:
        report.append(f"{len(errors)} unexpected client errors, e.g.:\n  "
                      + "\n  ".join(errors[:15]))
    if disagree:
        report.append("after the run the servers disagree:\n" + "\n".join(disagree))
    if reused:
        report.append(f"{len(reused)} UIDs seen naming two messages, e.g.:\n  "
                      + "\n  ".join(f"{k}: {v}" for k, v in list(reused.items())[:8]))
    if wrong_body:
        report.append(f"bodies that differ from what was appended: {list(wrong_body.items())[:5]}")
    if resync:
        report.append("force-resync repaired something:\n  " + "\n  ".join(resync[:20]))
    for server in after:
        for folder in STRESS_FOLDERS:
            a, b = final[server][folder], after[server][folder]
            if (a.uidvalidity, a.messages) != (b.uidvalidity, b.messages):
                report.append(f"{server} {folder}: force-resync changed UIDVALIDITY/UIDs/flags: "
                              f"{a.uidvalidity} {a.uids()} -> {b.uidvalidity} {b.uids()}")
    report += [f"Dovecot complained: {line}" for line in pair.dv.trouble()[:20]]
    report += [f"mailhost logged: {line}" for line in pair.mailhost_trouble()[:20]]
    total = sum(sum(o.values()) for o in ops.values())
    print(f"stress: {total} operations; per client: {ops}")  # shown with -rP or -s
    assert total > 100, f"the clients did too little: {ops}"
    # Dovecot's documented limit with programs that rename Maildir files without its
    # index lock (maildir-sync.c: "If another process is rename()ing files while we
    # are readdir()ing, it's possible that readdir() never lists some files ...
    # they would show up under new UIDs ... a problem with external changes ...
    # rarely happens except under high amount of modifications"): now and then, under
    # this churn, Dovecot gives one message a new UID and says so. The new record is
    # always Dovecot's own (traced by logging every record mailhost writes); no UID
    # names two messages, nothing is lost, the servers agree. Every other finding
    # fails the test.
    renumbered = [line for line in report if DOVECOT_RENUMBERED.search(line)]
    if renumbered:
        print("Dovecot renumbered under churn (its documented limit):\n"
              + "\n".join(renumbered))
    report = [line for line in report if line not in renumbered]
    assert not report, "\n".join(report + [f"operations per client: {ops}"])


# -------------------------------------------------------------- 4. file modes

#: Dovecot's empty ``dovecot-uidvalidity.<hex>`` marker (its name records the next
#: UIDVALIDITY) is made 0444 by Dovecot itself, also under a 0700 Maildir; it holds no
#: data and sits in a 0700 directory, so it is the one file allowed to differ.
UIDVALIDITY_MARKER = re.compile(r"dovecot-uidvalidity\.[0-9a-f]+$")


def test_everything_either_server_made_is_private_to_the_mail_user(pair):
    """After delivery, APPEND, COPY, flag changes, expunge and CREATE through both
    servers (umask 022): every file in the Maildir and in Dovecot's indexes belongs to
    the mail user, files 0600, directories 0700."""
    pair.deliver("modes-0@sharing.test")
    for server in ("mailhost", "dovecot"):
        c = pair.imap(server)
        assert c.create(f"Made.By{server}")[0] == "OK"
        append(c, "INBOX", "(\\Seen)", message(f"modes-{server}@sharing.test", server))
        c.select("INBOX")
        uids = uids_by_msgid(c)
        assert c.uid("COPY", str(uids["<modes-0@sharing.test>"]), f"Made.By{server}")[0] == "OK"
        mine = uids[f"<modes-{server}@sharing.test>"]
        assert c.uid("STORE", str(mine), "+FLAGS", "(\\Flagged $Kw)")[0] == "OK"
        expunge_uid(c, mine)
        c.logout()

    wrong = []
    roots = [pair.mail_root, os.path.join(pair.dv.workdir, "index")]
    for root in roots:
        for d, _dirs, files in os.walk(root):
            for name, want in [(d, {0o700})] + [(os.path.join(d, f), {0o600}) for f in files]:
                st = os.lstat(name)
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISLNK(st.st_mode):
                    wrong.append(f"{name}: a symlink")
                    continue
                if UIDVALIDITY_MARKER.match(os.path.basename(name)):
                    want = {0o600, 0o444}  # see UIDVALIDITY_MARKER
                if (st.st_uid, st.st_gid) != (pair.user.uid, pair.user.gid) or mode not in want:
                    wrong.append(f"{name}: uid {st.st_uid} gid {st.st_gid} mode {mode:o}, want "
                                 f"{pair.user.uid}:{pair.user.gid} "
                                 f"{' or '.join(f'{m:o}' for m in sorted(want))}")
    assert not wrong, (f"{len(wrong)} paths not private to {pair.user.name}, e.g.:\n"
                       + "\n".join(wrong[:30]))
    pair.assert_logs_clean()


if __name__ == "__main__":  # one stress client process (run_stress_clients)
    _server, _port, _n, _deadline, _out = sys.argv[1:]
    _result = stress_client(_server, int(_port), int(_n), float(_deadline))
    with open(_out, "w") as _f:
        json.dump(_result, _f)
