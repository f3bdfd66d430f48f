"""FileModes: what the store creates has the configured mode (and group) whatever the
umask, and what already exists is left as it is."""

from __future__ import annotations

import grp
import os
import stat

import pytest

from mailhost.store._maildir import maildir_io
from mailhost.store.modes import PRIVATE, FileModes

SHARED = FileModes(0o660, 0o770, grp.getgrnam("mail").gr_gid)


@pytest.fixture(params=[0o077, 0o022], ids=["umask077", "umask022"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("modes", [PRIVATE, FileModes(0o640, 0o750), SHARED],
                         ids=["private", "0640", "shared"])
def test_new_files_and_directories_get_the_mode(tmp_path, umask, modes):
    top = tmp_path / "a" / "b" / "c"
    modes.makedirs(str(top))
    want_dir = modes.dir_mode | (stat.S_ISGID if modes.group is not None else 0)
    for d in (tmp_path / "a", tmp_path / "a" / "b", top):
        assert mode(d) == want_dir, d
    os.close(modes.open_new(str(top / "f")))
    modes.touch(str(top / "maildirfolder"))
    modes.write_atomic(str(top / "subscriptions"), b"INBOX\n", fsync=True)
    for f in ("f", "maildirfolder", "subscriptions"):
        assert mode(top / f) == modes.file_mode, f
    if modes.group is not None:
        for p in (tmp_path / "a", top, top / "f", top / "subscriptions"):
            assert os.lstat(p).st_gid == modes.group, p
    assert sorted(os.listdir(top)) == ["f", "maildirfolder", "subscriptions"]


def test_existing_paths_are_left_as_they_are(tmp_path, umask):
    """Files and directories made by an older version or another program keep their
    modes: only what the store creates gets its own."""
    d = tmp_path / "old"
    d.mkdir()
    os.chmod(d, 0o755)
    f = d / "maildirfolder"
    f.write_bytes(b"")
    os.chmod(f, 0o644)
    PRIVATE.makedirs(str(d))
    PRIVATE.touch(str(f))
    fd = PRIVATE.open_new(str(f), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.close(fd)
    assert (mode(d), mode(f)) == (0o755, 0o644)
    PRIVATE.makedirs(str(d / "cur"))
    assert mode(d / "cur") == 0o700
    with pytest.raises(FileExistsError):
        PRIVATE.open_new(str(f))  # the default is O_EXCL: never someone else's file


def test_write_atomic_replaces_with_our_mode_and_ignores_a_stale_temp(tmp_path, umask):
    path = tmp_path / "dovecot-keywords"
    path.write_text("0 old\n")
    os.chmod(path, 0o644)
    # A temp file a crash left under the name this thread would use.
    import threading

    stale = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    with open(stale, "w") as f:
        f.write("junk that is longer than the new content\n")
    os.chmod(stale, 0o666)
    PRIVATE.write_atomic(str(path), b"0 $Label1\n", fsync=False)
    assert path.read_bytes() == b"0 $Label1\n"
    assert mode(path) == 0o600
    assert os.listdir(tmp_path) == ["dovecot-keywords"]


def test_setgid_from_a_parent_is_kept_without_a_group(tmp_path, umask):
    """A site that made its Maildir tree setgid by hand keeps it in new directories."""
    parent = tmp_path / "shared"
    parent.mkdir()
    os.chmod(parent, 0o2770)
    PRIVATE.makedirs(str(parent / "alice" / "cur"))
    assert mode(parent / "alice") == 0o2700
    assert mode(parent / "alice" / "cur") == 0o2700


def test_cross_device_copy_gets_our_mode_and_the_source_times(tmp_path, umask):
    """COPY falls back to a copy on EXDEV: the copy gets the store's mode, not the
    source's (shutil.copystat would copy a 0644 over), and keeps the mtime that is the
    message's INTERNALDATE."""
    src = tmp_path / "src"
    src.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    os.chmod(src, 0o644)
    os.utime(src, (1_600_000_000, 1_600_000_000))
    dest = tmp_path / "dest"
    maildir_io.copy_durable(str(src), str(dest), True, SHARED)
    assert dest.read_bytes() == src.read_bytes()
    assert mode(dest) == 0o660 and os.lstat(dest).st_gid == SHARED.group
    assert os.stat(dest).st_mtime == 1_600_000_000
    assert sorted(os.listdir(tmp_path)) == ["dest", "src"]


def test_make_maildir_and_folder(tmp_path, umask):
    root = tmp_path / "mail" / "example.test" / "alice"
    maildir_io.make_maildir(str(root), folder=False, modes=PRIVATE)
    maildir_io.make_maildir(str(root / ".Projects"), folder=True, modes=PRIVATE)
    for dirpath, dirnames, filenames in os.walk(tmp_path / "mail"):
        for name in dirnames:
            assert mode(os.path.join(dirpath, name)) == 0o700, name
        for name in filenames:
            assert mode(os.path.join(dirpath, name)) == 0o600, name
    assert os.path.exists(root / ".Projects" / "maildirfolder")


@pytest.mark.parametrize("kwargs", [{"file_mode": 0o644 | 0o100}, {"file_mode": 0o400},
                                    {"dir_mode": 0o600}, {"dir_mode": 0o2770}])
def test_bad_modes_are_refused(kwargs):
    with pytest.raises(ValueError):
        FileModes(**kwargs)
