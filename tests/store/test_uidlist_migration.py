"""A folder an older mailhost wrote (``mailhost-uidlist``) keeps UIDVALIDITY, UIDNEXT and
every UID when its first open moves them into Dovecot's ``dovecot-uidlist``."""

from __future__ import annotations

import os

import pytest_twisted

from mailhost.store._maildir.dovecot_uidlist import UIDLIST_FILE, UidList
from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.maildir import MaildirStore

A = "alice@example.test"
MSG = b"Subject: m\r\n\r\nbody\r\n"

#: The line format of main's mailhost/store/uidlist.py, byte for byte.
LEGACY_LINE = "%d %d %d %d %s\n"


def home_of(root: str) -> str:
    return os.path.join(root, "example.test", "alice")


def write_old_folder(home: str) -> dict[str, int]:
    """Files and a mailhost-uidlist as main wrote them: UIDs 1..6 given, 2 and 6
    expunged (6 was the last: UIDNEXT stays 7), a stale line for 2, a date filled in
    later by a second line, a torn last line."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(home, sub), exist_ok=True)
    with open(os.path.join(home, "mailhost-special-use"), "w") as f:
        f.write("")
    bases = {uid: f"17000000{uid:02d}.M{uid}P9Q{uid}.old,S={len(MSG)},W={len(MSG)}"
             for uid in range(1, 7)}
    on_disk = {1: "cur/%s:2,S", 3: "cur/%s:2,", 4: "new/%s", 5: "cur/%s:2,FS"}
    for uid, where in on_disk.items():
        path = os.path.join(home, where % bases[uid])
        with open(path, "wb") as f:
            f.write(MSG)
        os.utime(path, (1_600_000_000 + uid, 1_600_000_000 + uid))
    lines = ["V1234567 N7\n"]
    for uid in range(1, 7):
        date = -1 if uid == 3 else 1_600_000_000 + uid
        lines.append(LEGACY_LINE % (uid, date, len(MSG), 0, bases[uid]))
    lines.append(LEGACY_LINE % (3, 1_600_000_003, len(MSG), 0, bases[3]))  # date pass
    lines.append("7 16000")  # torn
    with open(os.path.join(home, "mailhost-uidlist"), "w") as f:
        f.writelines(lines)
    return {bases[uid]: uid for uid in on_disk}


@pytest_twisted.ensureDeferred
async def test_migration_keeps_validity_uidnext_and_every_uid(tmp_path):
    root = str(tmp_path / "mail")
    home = home_of(root)
    expected = write_old_folder(home)
    store = MaildirStore(root, fsync=False)
    box = await (await store.open_account(A)).open_folder("INBOX")
    assert box.uid_validity == 1234567 and box.uid_next == 7
    assert {i.key: i.uid for i in box.messages()} == expected
    assert [i.internal_date for i in box.messages()] == [1_600_000_000 + u
                                                        for u in (1, 3, 4, 5)]
    assert box.get(5).flags == {"\\Flagged", "\\Seen"} and box.get(4).recent
    # The old file is kept, renamed; Dovecot's file has the same numbers.
    assert not os.path.exists(os.path.join(home, "mailhost-uidlist"))
    assert os.path.exists(os.path.join(home, "mailhost-uidlist.migrated"))
    ul = UidList(os.path.join(home, UIDLIST_FILE))
    assert ul.refresh()
    assert (ul.validity, ul.next_uid, ul.by_base) == (1234567, 7, expected)
    assert os.stat(os.path.join(home, UIDLIST_FILE)).st_mode & 0o777 == 0o600
    # Expunged UIDs (2, and 6 at the end) never come back.
    w = store.new_message()
    w.write(MSG)
    assert await w.commit([DeliveryTarget(A)]) == [7]
    again = await (await MaildirStore(root).open_account(A)).open_folder("INBOX")
    assert [i.uid for i in again.messages()] == [1, 3, 4, 5, 7]
    assert again.uid_validity == 1234567 and again.uid_next == 8


@pytest_twisted.ensureDeferred
async def test_dovecot_uidlist_wins_when_both_exist(tmp_path):
    root = str(tmp_path / "mail")
    home = home_of(root)
    expected = write_old_folder(home)
    theirs = {base: uid + 100 for base, uid in expected.items()}
    with open(os.path.join(home, UIDLIST_FILE), "w") as f:
        f.write("3 V999 N200 G0123456789abcdef0123456789abcdef\n")
        f.writelines(f"{uid} :{base}\n" for base, uid in sorted(theirs.items(),
                                                                key=lambda kv: kv[1]))
    box = await (await MaildirStore(root).open_account(A)).open_folder("INBOX")
    assert box.uid_validity == 999 and box.uid_next == 200
    assert {i.key: i.uid for i in box.messages()} == theirs
    assert os.path.exists(os.path.join(home, "mailhost-uidlist"))  # left alone
