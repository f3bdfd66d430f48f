"""Folder directories are spelt in modified UTF-7, and older UTF-8 spellings move."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import globalLogPublisher

from mailhost.store import mutf7
from mailhost.store.interfaces import DeliveryTarget, InvalidFolderName
from mailhost.store.maildir import MaildirStore

A = "alice@example.test"


def _maildir(path: str) -> None:
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)


@pytest_twisted.ensureDeferred
async def test_directories_use_modified_utf7(tmp_path):
    store = MaildirStore(str(tmp_path))
    account = await store.open_account(A)
    await account.create_folder("Entw\u00fcrfe")
    await account.create_folder("R&D.\u65e5\u672c")
    w = store.new_message()
    w.write(b"Subject: x\r\n\r\nbody\r\n")
    await w.commit([DeliveryTarget(A, folder="R&D.\u65e5\u672c")])
    root = os.path.join(str(tmp_path), "example.test", "alice")
    dirs = set(os.listdir(root))
    assert {".Entw&APw-rfe", ".R&-D", ".R&-D.&ZeVnLA-"} <= dirs
    assert not any(not d.isascii() for d in dirs)
    assert {"Entw\u00fcrfe", "R&D", "R&D.\u65e5\u672c"} <= set(await account.list_folders())
    await account.rename_folder("R&D", "\u00c4nderungen")
    assert ".&AMQ-nderungen.&ZeVnLA-" in os.listdir(root)
    folder = await account.open_folder("\u00c4nderungen.\u65e5\u672c")
    assert len(folder.messages()) == 1
    await account.delete_folder("Entw\u00fcrfe")
    assert ".Entw&APw-rfe" not in os.listdir(root)
    await store.close()


@pytest_twisted.ensureDeferred
async def test_utf8_directories_from_older_versions_are_respelt(tmp_path):
    root = os.path.join(str(tmp_path), "example.test", "alice")
    _maildir(root)
    _maildir(os.path.join(root, ".Entw\u00fcrfe"))
    _maildir(os.path.join(root, ".a&b"))
    with open(os.path.join(root, ".Entw\u00fcrfe", "cur", "1700000000.M1P1.h,S=21:2,S"),
              "wb") as f:
        f.write(b"Subject: x\r\n\r\nbody\r\n")
    store = MaildirStore(str(tmp_path))
    account = await store.open_account(A)
    assert {"Entw\u00fcrfe", "a&b"} <= set(await account.list_folders())
    assert {".Entw&APw-rfe", ".a&-b"} <= set(os.listdir(root))
    folder = await account.open_folder("Entw\u00fcrfe")
    [info] = folder.messages()
    assert "\\Seen" in info.flags
    await store.close()


@given(st.text(max_size=40))
def test_codec_round_trips_any_name(name):
    encoded = mutf7.encode(name)
    assert encoded.isascii()
    assert "/" not in encoded or "/" in name  # never adds a path separator
    assert mutf7.decode(encoded) == name


@pytest_twisted.ensureDeferred
async def test_respelling_that_cannot_happen_never_breaks_the_account(tmp_path):
    root = os.path.join(str(tmp_path), "example.test", "alice")
    _maildir(root)
    long_name = "\u00c4" * 100  # 200 bytes of UTF-8, 270 in modified UTF-7
    _maildir(os.path.join(root, "." + long_name))
    _maildir(os.path.join(root, ".Entw\u00fcrfe"))  # and the new spelling exists too
    _maildir(os.path.join(root, ".Entw&APw-rfe"))
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        store = MaildirStore(str(tmp_path))
        account = await store.open_account(A)
        names = set(await account.list_folders())
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert "Entw\u00fcrfe" in names and long_name not in names
    skipped = {e["dir"] for e in events if e.get("event") == "folder_respell_skipped"}
    assert skipped == {"." + long_name, ".Entw\u00fcrfe"}
    assert {"." + long_name, ".Entw\u00fcrfe"} <= set(os.listdir(root))  # nothing lost
    with pytest.raises(InvalidFolderName):
        await account.create_folder(long_name)
    await store.close()
