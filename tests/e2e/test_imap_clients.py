"""Real IMAP clients from Debian against the in-process server: curl, mutt, mbsync.

Each runs as a subprocess bounded by ``timeout``; the server is the same listener
the service uses, over a MaildirStore in tmp_path.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.imap.test_server_harness import imap_host_fixture, make_message  # noqa: F401


def _run(args: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, timeout=timeout, **kw)


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed (CI installs it)")


@pytest_twisted.ensureDeferred
async def test_curl_list_fetch_and_partial(imap_host):
    _need("curl")
    host = await imap_host(kind="maildir")
    msg = make_message("curl test", body="0123456789abcdefghij\r\n")
    await host.deliver(msg)
    base = f"imap://127.0.0.1:{host.port}"
    auth = ["curl", "-s", "--max-time", "10", "-u", "alice@example.test:secret"]

    listing = await threads.deferToThread(_run, [*auth, base + "/"])
    assert listing.returncode == 0, listing.stderr
    assert b'* LIST (\\HasNoChildren) "." INBOX' in listing.stdout
    assert b"\\Sent" in listing.stdout

    whole = await threads.deferToThread(_run, [*auth, base + "/INBOX;UID=1"])
    assert whole.returncode == 0 and whole.stdout == msg

    part = await threads.deferToThread(
        _run, [*auth, base + "/INBOX;UID=1;SECTION=TEXT;PARTIAL=3.7"])
    assert part.returncode == 0 and part.stdout == b"3456789"

    search = await threads.deferToThread(_run, [*auth, base + "/INBOX", "-X",
                                                'SEARCH SUBJECT "curl"'])
    assert b"* SEARCH 1" in search.stdout


@pytest_twisted.ensureDeferred
async def test_mutt_reads_inbox_and_marks_seen(imap_host, tmp_path):
    _need("mutt")
    host = await imap_host(kind="maildir")
    for i in range(3):
        await host.deliver(make_message(f"mutt msg {i}"))
    rc = tmp_path / "muttrc"
    rc.write_text(
        'set imap_user="alice@example.test"\nset imap_pass="secret"\n'
        "set ssl_starttls=no\nset ssl_force_tls=no\n"
        f'set folder="imap://127.0.0.1:{host.port}/"\nset spoolfile="+INBOX"\n'
        'set header_cache=""\nset message_cachedir=""\nset mark_old=no\nset move=no\n'
        "set quit=yes\nset wait_key=no\nset timeout=1\n"
    )
    # mutt needs a terminal: run it under script(1); keys are pushed, so no input is read.
    cmd = (f"mutt -n -F {rc} -f imap://127.0.0.1:{host.port}/INBOX "
           "-e 'push <first-entry><display-message><exit><quit>'")
    env = dict(os.environ, TERM="xterm", HOME=str(tmp_path))
    res = await threads.deferToThread(
        _run, ["timeout", "25", "script", "-qec", cmd, "/dev/null"], timeout=30, env=env,
        stdin=subprocess.DEVNULL)
    out = res.stdout.decode("utf-8", "replace")
    assert res.returncode == 0, out[-2000:]
    assert "mutt msg 0" in out and "mutt msg 2" in out
    assert "3 kept" in out
    folder = await host.folder()
    seen = [i.uid for i in folder.messages() if "\\Seen" in i.flags]
    assert seen == [1]


@pytest_twisted.ensureDeferred
async def test_mbsync_full_sync_and_back(imap_host, tmp_path):
    _need("mbsync")
    host = await imap_host(kind="maildir")
    for i in range(3):
        await host.deliver(make_message(f"inbox {i}"))
    account = await host.store.open_account("alice@example.test")
    await account.create_folder("Work.Old")
    await host.deliver(make_message("work 1"), folder="Work")
    await host.deliver(make_message("old 1"), folder="Work.Old", flags={"\\Flagged"})
    local = tmp_path / "local"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        f"IMAPAccount mh\nHost 127.0.0.1\nPort {host.port}\nUser alice@example.test\n"
        "Pass secret\nSSLType None\nAuthMechs LOGIN\n\n"
        "IMAPStore mh-remote\nAccount mh\n\n"
        f"MaildirStore mh-local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        "Channel mh\nFar :mh-remote:\nNear :mh-local:\nPatterns *\nCreate Both\n"
        "Expunge Both\nSyncState *\n"
    )
    res = await threads.deferToThread(_run, ["mbsync", "-c", str(rc), "-a"])
    assert res.returncode == 0, res.stderr

    def files(path):
        return sorted(p for sub in ("cur", "new") for p in (path / sub).iterdir())

    inbox = files(local / "INBOX")
    assert len(inbox) == 3
    assert len(files(local / "Work")) == 1
    (old,) = files(local / "Work" / "Old")
    assert old.name.endswith(",F")
    for name in ("Sent", "Drafts", "Trash", "Junk"):
        assert (local / name).is_dir()

    # Local changes: flag one, delete one (trashed + Expunge Both), add a new one.
    first, second = inbox[0], inbox[1]
    first.rename(first.parent.parent / "cur" / (first.name.split(":2,")[0] + ":2,F"))
    second.rename(second.parent.parent / "cur" / (second.name.split(":2,")[0] + ":2,T"))
    (local / "INBOX" / "new" / "1.local").write_bytes(
        b"Subject: from mbsync\r\nMessage-ID: <local@example.test>\r\n\r\nnew\r\n")
    res = await threads.deferToThread(_run, ["mbsync", "-c", str(rc), "-a"])
    assert res.returncode == 0, res.stderr

    folder = await host.folder()
    infos = folder.messages()
    assert [i.uid for i in infos] == [1, 3, 4]
    assert "\\Flagged" in infos[0].flags
    f = await folder.open_message(4)
    try:
        assert b"Subject: from mbsync" in f.read()
    finally:
        f.close()
