"""Mail is private on disk: a real ``twistd -n mailhost`` started under umask 022 makes
every file 0600 and every directory 0700 (or what ``[store]`` configures), through
SMTP delivery, IMAP APPEND, CREATE, SUBSCRIBE, COPY, MOVE, STORE and the caches.

Real clients only: smtplib delivers, imapclient does the rest. After each operation
the whole store tree is walked and any path with another mode (or group) is named.
"""

from __future__ import annotations

import grp
import os
import smtplib
import stat

from imapclient import IMAPClient

ALICE = "alice@example.test"


def _send(proc, subject: str, body: str = "hi\r\n") -> None:
    with smtplib.SMTP(proc.host, proc.ports["smtp"], timeout=30) as s:
        s.sendmail("bob@example.test", [ALICE],
                   f"From: bob@example.test\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\r\n"
                   + body)


def _imap(proc) -> IMAPClient:
    c = IMAPClient(proc.host, port=proc.ports["imap"], ssl=False, timeout=30)
    c.login(ALICE, "alice-pw")
    return c


def _wrong_modes(top: str, file_mode: int, dir_mode: int, gid: int | None = None,
                 ) -> list[str]:
    """Every path under ``top`` (``top`` included) whose mode or group is not as
    configured, with what it has; [] when all are right."""
    bad = []

    def check(path: str, want: int) -> None:
        st = os.lstat(path)
        mode = stat.S_IMODE(st.st_mode)
        if mode != want or (gid is not None and st.st_gid != gid):
            bad.append(f"{os.path.relpath(path, top)}: {mode:04o} gid {st.st_gid} "
                       f"(want {want:04o}{'' if gid is None else f' gid {gid}'})")

    check(top, dir_mode)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            check(os.path.join(dirpath, name), dir_mode)
        for name in filenames:
            check(os.path.join(dirpath, name), file_mode)
    return bad


def _walk_after_each_operation(proc, file_mode: int, dir_mode: int,
                               gid: int | None = None) -> None:
    store = os.path.join(proc.data_dir, "mail")

    def assert_modes(after: str) -> None:
        bad = _wrong_modes(store, file_mode, dir_mode, gid)
        assert not bad, f"after {after}: " + "; ".join(bad)

    _send(proc, "small")
    assert_modes("SMTP delivery")
    _send(proc, "large", "x" * 998 + "\r\n" + ("y" * 76 + "\r\n") * 5000)  # > 256 KiB
    assert_modes("SMTP delivery of a message spilled to disk")
    c = _imap(proc)
    c.append("INBOX", b"Subject: appended\r\n\r\nbody\r\n")
    assert_modes("APPEND")
    c.create_folder("Projects.Sub")
    assert_modes("CREATE Projects.Sub")
    c.subscribe_folder("Projects.Sub")
    assert_modes("SUBSCRIBE")
    c.select_folder("INBOX")
    uids = c.search("ALL")
    assert len(uids) == 3
    c.fetch(uids, ["ENVELOPE", "BODYSTRUCTURE"])  # fills the metadata cache
    c.copy(uids[:2], "Projects.Sub")
    assert_modes("COPY")
    c.add_flags(uids[:1], [b"\\Seen", b"$Label1"])  # a rename, and dovecot-keywords
    assert_modes("STORE \\Seen $Label1")
    c.move(uids[1:2], "Projects")
    assert_modes("MOVE")
    c.append("Projects", b"Subject: appended 2\r\n\r\nbody\r\n", flags=[b"$Label2"])
    assert_modes("APPEND with a keyword")
    c.logout()
    proc.stop()  # SIGTERM: the metadata cache is flushed as the store closes
    assert "Server Shut Down." in proc.log()
    names = {n for _, _, files in os.walk(store) for n in files}
    assert {"mailhost-cache", "dovecot-keywords", "subscriptions", "mailhost-special-use",
            "maildirfolder"} <= names, names
    assert_modes("shutdown")


def test_store_is_private_under_umask_022(mailhost_factory):
    """Files 0600, directories 0700 after delivery, APPEND, COPY, MOVE, flag changes,
    CREATE and SUBSCRIBE, though twistd runs under umask 022 (issue 13)."""
    proc = mailhost_factory()
    assert proc.umask == 0o022
    proc.start()
    _walk_after_each_operation(proc, 0o600, 0o700)


def test_configured_modes_and_group(mailhost_factory):
    """``file_mode = "0660"``, ``dir_mode = "0770"``, ``group = "mail"``: files 0660,
    directories 2770 (setgid: an MDA's files get the group too), all of group mail.
    The test runs as root or as a member of group mail, as a mail host sharing its
    Maildirs with an MDA does."""
    gid = grp.getgrnam("mail").gr_gid
    proc = mailhost_factory(extra={"store": {"file_mode": "0660", "dir_mode": "0770",
                                             "group": "mail"}})
    proc.start()
    _walk_after_each_operation(proc, 0o660, 0o2770, gid)


def test_existing_modes_are_left_alone(mailhost_factory):
    """Mail written by an older version (0644 files, 0755 directories) keeps its modes;
    only what mailhost creates from now on is private. A message that arrives keeps
    its own mode through a flag change (a rename)."""
    proc = mailhost_factory()
    box = proc.maildir(ALICE)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(box, sub), mode=0o755)
        os.chmod(os.path.join(box, sub), 0o755)
    os.chmod(box, 0o755)
    old = os.path.join(box, "cur", "1700000000.M1P1Q1.old:2,")
    with open(old, "wb") as f:
        f.write(b"Subject: old\r\n\r\nold\r\n")
    os.chmod(old, 0o644)
    proc.start()
    _send(proc, "new")
    c = _imap(proc)
    c.select_folder("INBOX")
    uids = c.search("ALL")
    assert len(uids) == 2
    c.add_flags(uids, [b"\\Seen"])
    c.logout()
    proc.stop()
    modes = {}
    for sub in ("cur", "new"):
        for name in os.listdir(os.path.join(box, sub)):
            modes[name.partition(".")[0]] = stat.S_IMODE(os.stat(os.path.join(box, sub,
                                                                            name)).st_mode)
    assert modes.pop("1700000000") == 0o644
    assert list(modes.values()) == [0o600]
    assert stat.S_IMODE(os.stat(os.path.join(box, "cur")).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(os.path.join(box, ".Sent")).st_mode) == 0o700
