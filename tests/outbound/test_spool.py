"""Spool durability: writer, envelopes, orphan cleanup, and a writer killed with -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from mailhost.outbound.envelope import Envelope, RecipientState
from mailhost.outbound.interfaces import IQueueWriter, QueueRecipient
from mailhost.outbound.spool import MAGIC, SpoolFiles, read_headers
from mailhost.outbound.spool_writer import MEMORY_LIMIT, SpoolWriter


@pytest_twisted.ensureDeferred
async def test_writer_streams_normalises_and_commits(tmp_path):
    files = SpoolFiles(str(tmp_path / "q"), fsync=True)
    files.ensure_sync()
    committed = []
    w = SpoolWriter(files, "alice@example.test", "E1", "hdrs", committed.append, time.time)
    verifyObject(IQueueWriter, w)
    w.write(b"Subject: x\r")
    w.write(b"\nX: y\n\nline1\nline2\r\n")
    qid = await w.commit([QueueRecipient("bob@remote.example", frozenset({"FAILURE"}), "rfc822;bob@remote.example")])
    assert committed and committed[0].id == qid
    env = files.load_envelope_sync(qid)
    # One file: the envelope line, then the message.
    raw = open(files.message_path(qid), "rb").read()
    assert raw.startswith(MAGIC) and committed[0].offset == env.offset
    data = raw[env.offset:]
    assert data == b"Subject: x\r\nX: y\r\n\r\nline1\r\nline2\r\n"
    assert os.listdir(files.env_dir) == []
    assert read_headers(files.message_path(qid), offset=env.offset) == b"Subject: x\r\nX: y\r\n"
    assert env.sender == "alice@example.test" and env.envid == "E1" and env.ret == "HDRS"
    assert env.size == len(data)
    assert env.recipients[0].notify == ["FAILURE"] and env.recipients[0].status == "pending"
    assert os.listdir(files.tmp_dir) == []


def test_abort_leaves_nothing(tmp_path):
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    w = SpoolWriter(files, "", None, None, lambda e: None, time.time)
    w.write(b"x\r\n")
    w.abort()
    w.abort()
    assert os.listdir(files.tmp_dir) == []


def test_load_cleans_orphans(tmp_path):
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    open(files.message_path("0000000000A00000000"), "wb").write(b"orphan")
    os.utime(files.message_path("0000000000A00000000"), (1, 1))  # an old unfinished commit
    open(files.message_path("0000000000D00000000"), "wb").write(b"being committed")
    env = Envelope(id="0000000000B00000000", sender="", recipients=[], arrival=1.0)
    files.save_envelope_sync(env)  # envelope without message
    good = Envelope(id="0000000000C00000000", sender="a@b", recipients=[], arrival=2.0)
    open(files.message_path(good.id), "wb").write(b"Received: x\r\nReceived: y\r\n\r\nbody")
    files.save_envelope_sync(good)
    envelopes, problems = files.load_all_sync()
    assert [e.id for e in envelopes] == [good.id]
    assert len(problems) == 2
    # A young bare message may be a two-file commit between its renames: left alone.
    assert sorted(os.listdir(files.msg_dir)) == [good.id, "0000000000D00000000"]
    assert read_headers(files.message_path(good.id)) == b"Received: x\r\nReceived: y\r\n"


WRITER = textwrap.dedent("""
    import sys, time
    from mailhost.outbound.envelope import Envelope, RecipientState, new_queue_id
    from mailhost.outbound.spool import SpoolFiles
    files = SpoolFiles(sys.argv[1], fsync=True)
    files.ensure_sync()
    body = b"Subject: t\\r\\n\\r\\n" + b"x" * 20000 + b"\\r\\n"
    n = 0
    while True:
        qid = new_queue_id()
        tmp = files.tmp_dir + "/" + qid + ".msg"
        env = Envelope(id=qid, sender="a@x.test", arrival=time.time(), size=len(body),
                       recipients=[RecipientState("b@y.test")])
        if sys.argv[2] == "one-file":
            files.commit_sync(tmp, env, body)
        else:
            with open(tmp, "wb") as f:
                for i in range(0, len(body), 4096):
                    f.write(body[i:i + 4096])
            files.commit_sync(tmp, env)
        print(qid, flush=True)  # acknowledged
        n += 1
""")


@pytest.mark.parametrize("form", ["one-file", "two-file"])
def test_killed_writer_loses_no_acknowledged_message(tmp_path, form):
    root = str(tmp_path / "q")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, root, form], stdout=subprocess.PIPE,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    acked = []
    deadline = time.monotonic() + 20
    while len(acked) < 30 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked.append(line.decode().strip())
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read().decode().split()
    proc.wait(10)
    acked += rest
    assert len(acked) >= 30
    files = SpoolFiles(root)
    envelopes, _problems = files.load_all_sync()
    ids = {e.id for e in envelopes}
    assert set(acked) <= ids
    for e in envelopes:
        assert os.path.getsize(files.message_path(e.id)) == e.offset + e.size
    # Nothing half-written is loaded as a message. The one commit the kill cut between
    # its renames may leave a message file without envelope; the loader leaves a young
    # one alone (a live commit looks the same) and removes it after 10 minutes.
    orphans = set(os.listdir(files.msg_dir)) - ids
    assert len(orphans) <= 1 and not orphans & set(acked), orphans


@pytest_twisted.ensureDeferred
async def test_writer_counts_received_headers_across_chunks(tmp_path):
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    w = SpoolWriter(files, "a@b", None, None, lambda e: None, time.time)
    for chunk in (b"Rece", b"ived: one\r\nX: y\r\nreceived:", b" two\r", b"\n\r\n",
                  b"Received: in the body\r\n"):
        w.write(chunk)
    await w.commit([QueueRecipient("x@y")])
    assert w.hops == 2
    assert files.load_envelope_sync(w.id).hops == 2


@pytest_twisted.ensureDeferred
async def test_large_message_keeps_the_two_file_form(tmp_path):
    files = SpoolFiles(str(tmp_path / "q"), fsync=True)
    files.ensure_sync()
    w = SpoolWriter(files, "a@b", None, None, lambda e: None, time.time)
    body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (MEMORY_LIMIT // 1000 + 10)
    w.write(body)
    qid = await w.commit([QueueRecipient("x@y")])
    assert open(files.message_path(qid), "rb").read() == body
    env = files.load_envelope_sync(qid)
    assert env.offset == 0 and env.size == len(body)
    assert os.listdir(files.env_dir) == [qid]


@pytest_twisted.ensureDeferred
async def test_saved_envelope_overrides_the_embedded_one_and_remove_takes_both(tmp_path):
    files = SpoolFiles(str(tmp_path / "q"), fsync=True)
    files.ensure_sync()
    w = SpoolWriter(files, "a@b", None, None, lambda e: None, time.time)
    w.write(b"Subject: s\r\n\r\nbody\r\n")
    qid = await w.commit([QueueRecipient("x@y"), QueueRecipient("z@y")])
    env = files.load_envelope_sync(qid)
    env.recipients[0].attempts = 3
    await files.save_envelope(env)
    [loaded], problems = files.load_all_sync()
    assert problems == []
    assert loaded.recipients[0].attempts == 3 and loaded.offset == env.offset
    assert [(name, e.id) for name, e in files.iter_sync()] == [(qid, qid)]
    await files.remove(qid)
    assert os.listdir(files.msg_dir) == [] and os.listdir(files.env_dir) == []


def test_spool_of_the_two_file_form_still_loads(tmp_path):
    """A spool written before the one-file form: bare message files plus env/ID."""
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    env = Envelope(id="0000000000E00000000", sender="a@b", arrival=1.0, size=18,
                   recipients=[RecipientState("x@y")])
    raw = env.to_json().replace(b',"offset":0', b"")  # older envelopes have no offset
    open(files.envelope_path(env.id), "wb").write(raw)
    open(files.message_path(env.id), "wb").write(b"Subject: o\r\n\r\nold\r\n")
    [loaded], problems = files.load_all_sync()
    assert problems == [] and loaded.offset == 0 and loaded.recipients[0].address == "x@y"


@pytest_twisted.ensureDeferred
async def test_concurrent_commits_share_batches(tmp_path):
    from twisted.internet import defer

    files = SpoolFiles(str(tmp_path / "q"), fsync=True)
    files.ensure_sync()
    writers = []
    for i in range(30):
        w = SpoolWriter(files, "a@b", None, None, lambda e: None, time.time)
        w.write(b"Subject: %d\r\n\r\nbody\r\n" % i)
        writers.append(w)
    ids = await defer.gatherResults([w.commit([QueueRecipient("x@y")]) for w in writers])
    assert files.batches < 30
    assert sorted(ids) == sorted(e.id for e in files.load_all_sync()[0])


# Regression tests from the review of the one-file spool.


def _writer(files, body=b"Subject: s\r\n\r\nbody\r\n"):
    w = SpoolWriter(files, "a@b", None, None, lambda e: None, time.time)
    w.write(body)
    return w


async def _settled(d, timeout=10.0):
    """The result or Failure of ``d``, failing the test instead of hanging."""
    from twisted.internet import defer, reactor

    d.addTimeout(timeout, reactor)
    [(ok, value)] = await defer.DeferredList([d], consumeErrors=True)
    return ok, value


@pytest_twisted.ensureDeferred
async def test_oversized_envelope_is_not_embedded_and_loads_after_restart(tmp_path):
    """2000 recipients with long non-ASCII ORCPTs: a 6+ MB envelope, over MAX_ENVELOPE."""
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    body = b"Subject: many\r\n\r\nbody\r\n"
    w = _writer(files, body)
    rcpts = [QueueRecipient(f"r{i}@x.example", frozenset({"FAILURE"}), "utf-8;" + "\u00fc" * 500)
             for i in range(2000)]
    qid = await w.commit(rcpts)
    restarted = SpoolFiles(files.root, fsync=False)
    [env], problems = restarted.load_all_sync()
    assert problems == [] and env.id == qid and len(env.recipients) == 2000
    with open(files.message_path(qid), "rb") as f:
        f.seek(env.offset)
        assert f.read() == body


@pytest_twisted.ensureDeferred
async def test_envelope_at_the_limit_round_trips(tmp_path, monkeypatch):
    """One limit for writing and reading: an envelope line of MAX_ENVELOPE octets is
    embedded, one octet more goes to env/ID; both load."""
    from mailhost.outbound import spool

    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()

    async def commit():
        w = _writer(files)
        w._now = lambda: 1.0  # same envelope length every time
        return await w.commit([QueueRecipient("x@y")])

    qid = await commit()
    with open(files.message_path(qid), "rb") as f:
        line = len(f.read()[len(MAGIC):].split(b"\n")[0]) + 1  # with its newline
    await files.remove(qid)
    for limit, embedded in ((line, True), (line - 1, False)):
        monkeypatch.setattr(spool, "MAX_ENVELOPE", limit)
        qid = await commit()
        env = SpoolFiles(files.root).load_envelope_sync(qid)
        assert env is not None and env.recipients[0].address == "x@y"
        assert os.listdir(files.env_dir) == ([] if embedded else [qid])
        assert open(files.message_path(qid), "rb").read().startswith(MAGIC) == embedded
        await files.remove(qid)


def _failing_start(self):
    raise RuntimeError("can't start new thread")


@pytest_twisted.ensureDeferred
async def test_worker_thread_start_failure_fails_the_batch_and_frees_its_slot(tmp_path, monkeypatch):
    import threading

    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    with monkeypatch.context() as m:
        m.setattr(threading.Thread, "start", _failing_start)
        for _ in range(3):  # more than BATCHES_IN_FLIGHT: no slot may leak
            w = _writer(files)
            ok, value = await _settled(w.commit([QueueRecipient("x@y")]))
            assert not ok and value.check(RuntimeError)
            assert not os.listdir(files.tmp_dir) and not os.listdir(files.msg_dir)
    qid = await _writer(files).commit([QueueRecipient("x@y")])
    assert files.load_envelope_sync(qid) is not None


@pytest_twisted.ensureDeferred
async def test_drain_waits_for_running_and_waiting_batches(tmp_path):
    import threading

    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    release = threading.Event()

    def blocked():
        assert release.wait(10)
        return "done", ()

    ds = [files.run_batch(blocked) for _ in range(3)]  # two running, one waiting
    drained = files.drain()
    assert not drained.called
    release.set()
    ok, _ = await _settled(drained)
    assert ok and all(d.called for d in ds)
    assert files.drain().called  # nothing in flight: at once


@pytest_twisted.ensureDeferred
async def test_service_stop_drains_the_spool_threads(tmp_path):
    import threading

    from mailhost.outbound.service import OutboundService
    from mailhost.settings import OutboundSettings
    from mailhost.store.memory import MemoryStore
    from tests.outbound.fakes import FakeResolver
    from tests.outbound.test_service import directory, make_config, started

    svc = await started(OutboundService(OutboundSettings.from_config(make_config(tmp_path)), MemoryStore(), directory(),
                                        resolver=FakeResolver()))
    release = threading.Event()
    files = svc.files
    d = files.run_batch(lambda: (release.wait(10), ()))
    stopped = svc.stopService()
    from twisted.internet import reactor, task

    await task.deferLater(reactor, 0.2)
    assert not stopped.called and not d.called
    release.set()
    ok, _ = await _settled(stopped)
    assert ok and d.called


@pytest_twisted.ensureDeferred
async def test_spool_threads_call_back_through_the_injected_reactor(tmp_path):
    from twisted.internet import reactor

    from mailhost.outbound.service import OutboundService
    from mailhost.settings import OutboundSettings
    from mailhost.store.memory import MemoryStore
    from tests.outbound.fakes import FakeResolver
    from tests.outbound.test_service import directory, make_config

    calls = []

    class Proxy:
        def __getattr__(self, name):
            return getattr(reactor, name)

        def callFromThread(self, f, *a, **kw):
            calls.append(f)
            return reactor.callFromThread(f, *a, **kw)

    proxy = Proxy()
    files = SpoolFiles(str(tmp_path / "q"), fsync=False, reactor=proxy)
    files.ensure_sync()
    await _writer(files).commit([QueueRecipient("x@y")])
    assert calls
    svc = OutboundService(OutboundSettings.from_config(make_config(tmp_path)), MemoryStore(), directory(), reactor=proxy,
                          resolver=FakeResolver())
    assert svc.files.reactor is proxy


@pytest.mark.parametrize("big", [False, True], ids=["one-file", "two-file"])
@pytest_twisted.ensureDeferred
async def test_directory_fsync_failure_after_rename_leaves_no_message(tmp_path, big):
    files = SpoolFiles(str(tmp_path / "q"), fsync=True)
    files.ensure_sync()

    def broken(paths):
        raise OSError(5, "Input/output error")

    files._group.sync = broken
    body = b"Subject: s\r\n\r\n" + (b"x" * 998 + b"\r\n") * (MEMORY_LIMIT // 1000 + 10 if big else 1)
    ws = [_writer(files, body) for _ in range(3)]
    from twisted.internet import defer

    results = await defer.DeferredList([w.commit([QueueRecipient("x@y")]) for w in ws],
                                       consumeErrors=True)
    assert all(not ok and f.check(OSError) for ok, f in results)
    assert os.listdir(files.msg_dir) == [] and os.listdir(files.env_dir) == []


@pytest_twisted.ensureDeferred
async def test_envelope_write_failure_in_the_two_file_form_leaves_no_message(tmp_path):
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()

    def broken(path, data):
        raise OSError(28, "No space left on device")

    files._write_atomic = broken
    w = _writer(files, b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (MEMORY_LIMIT // 1000 + 10))
    ok, f = await _settled(w.commit([QueueRecipient("x@y")]))
    assert not ok and f.check(OSError)
    assert os.listdir(files.msg_dir) == [] and os.listdir(files.tmp_dir) == []


@pytest_twisted.ensureDeferred
async def test_save_envelope_records_the_state_at_the_call(tmp_path):
    """The envelope is serialised before the thread hop: later changes on the reactor
    thread (the next recipient's result) must not leak into this save half-done."""
    import threading

    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    qid = await _writer(files).commit([QueueRecipient("x@y")])
    env = files.load_envelope_sync(qid)
    release = threading.Event()
    busy = [files.run_batch(lambda: (release.wait(10), ())) for _ in range(2)]
    saved = files.save_envelope(env)  # waits for a free batch slot
    env.recipients[0].status = "delivered"
    release.set()
    ok, _ = await _settled(saved)
    assert ok and all(d.called for d in busy)
    assert files.load_envelope_sync(qid).recipients[0].status == "pending"


#: The envelope keys of versions before the one-file spool (their from_json takes
#: exactly these; an unknown key makes the envelope unreadable).
LEGACY_KEYS = {"id", "sender", "recipients", "arrival", "size", "envid", "ret", "delay_warned",
               "hops"}


async def _three_forms(files):
    """A one-file message, one with a saved env/ID, and a large two-file one."""
    bodies = {}
    for n, body in enumerate([b"Subject: a\r\n\r\none\r\n", b"Subject: b\r\n\r\ntwo\r\n",
                              b"Subject: c\r\n\r\n" + (b"x" * 998 + b"\r\n") * 300]):
        qid = await _writer(files, body).commit([QueueRecipient(f"r{n}@y")])
        bodies[qid] = body
    second = sorted(bodies)[1]
    env = files.load_envelope_sync(second)
    env.recipients[0].attempts = 2
    await files.save_envelope(env)
    return bodies


@pytest_twisted.ensureDeferred
async def test_export_legacy_writes_the_two_file_form_older_versions_read(tmp_path):
    import json

    files = SpoolFiles(str(tmp_path / "q"), fsync=True)
    files.ensure_sync()
    bodies = await _three_forms(files)
    assert files.export_legacy_sync() == (3, [])
    for qid, body in bodies.items():
        assert open(files.message_path(qid), "rb").read() == body
        raw = json.loads(open(files.envelope_path(qid), "rb").read())
        assert set(raw) == LEGACY_KEYS
    assert json.loads(open(files.envelope_path(sorted(bodies)[1]), "rb").read())[
        "recipients"][0]["attempts"] == 2
    assert os.listdir(files.tmp_dir) == []
    # This version still reads it, and a second run has nothing left to do.
    envelopes, problems = SpoolFiles(files.root).load_all_sync()
    assert problems == [] and sorted(e.id for e in envelopes) == sorted(bodies)
    assert all(e.offset == 0 for e in envelopes)
    assert files.export_legacy_sync() == (0, [])


@pytest_twisted.ensureDeferred
async def test_export_legacy_interrupted_after_the_envelope_still_loads_and_finishes(tmp_path):
    """A crash between writing the legacy env/ID and replacing the one-file message."""
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    body = b"Subject: a\r\n\r\none\r\n"
    qid = await _writer(files, body).commit([QueueRecipient("x@y")])
    embedded = files.load_envelope_sync(qid)
    raw = embedded.to_json().replace(b',"offset":%d' % embedded.offset, b"")
    assert b"offset" not in raw
    open(files.envelope_path(qid), "wb").write(raw)
    [env], problems = SpoolFiles(files.root).load_all_sync()
    assert problems == [] and env.offset == embedded.offset
    assert files.export_legacy_sync() == (1, [])
    assert open(files.message_path(qid), "rb").read() == body
    [env], _ = SpoolFiles(files.root).load_all_sync()
    assert env.offset == 0


@pytest_twisted.ensureDeferred
async def test_queue_export_legacy_command(tmp_path):
    (tmp_path / "c.toml").write_text(
        f'[server]\ndomains = ["example.test"]\ndata_dir = "{tmp_path / "data"}"\n')
    files = SpoolFiles(str(tmp_path / "data" / "queue"), fsync=False)
    files.ensure_sync()
    bodies = await _three_forms(files)
    out = subprocess.run([sys.executable, "-m", "mailhost.cli.main", "--config",
                          str(tmp_path / "c.toml"), "queue", "export-legacy"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "3 messages rewritten" in out.stdout
    assert all(open(files.message_path(q), "rb").read() == b for q, b in bodies.items())


async def _queue(files, body=b"Subject: s\r\n\r\nbody\r\n"):
    w = SpoolWriter(files, "a@b", None, None, lambda e: None, time.time)
    w.write(body)
    return await w.commit([QueueRecipient("x@y")])


@pytest_twisted.ensureDeferred
async def test_removed_files_are_emptied_and_reused_not_unlinked(tmp_path):
    """A delivered message's file goes to free/, emptied; the next commit claims it
    (same inode, so no inode is freed or allocated per relayed message)."""
    files = SpoolFiles(str(tmp_path / "q"), fsync=True)
    files.ensure_sync()
    qid = await _queue(files, b"Subject: secret\r\n\r\n" + b"x" * 5000 + b"\r\n")
    inode = os.stat(files.message_path(qid)).st_ino
    await files.remove(qid)
    assert os.listdir(files.msg_dir) == []
    [free] = os.listdir(files.free_dir)
    assert os.path.getsize(os.path.join(files.free_dir, free)) == 0  # no old mail lingers
    qid2 = await _queue(files, b"Subject: next\r\n\r\nshort\r\n")
    assert os.stat(files.message_path(qid2)).st_ino == inode
    assert os.listdir(files.free_dir) == [] and os.listdir(files.tmp_dir) == []
    env = files.load_envelope_sync(qid2)
    raw = open(files.message_path(qid2), "rb").read()
    assert raw[env.offset:] == b"Subject: next\r\n\r\nshort\r\n"  # truncated, not overlaid
    [loaded], problems = files.load_all_sync()
    assert loaded.id == qid2 and problems == []


@pytest_twisted.ensureDeferred
async def test_free_files_are_bounded_and_adopted_after_restart(tmp_path, monkeypatch):
    import mailhost.outbound.spool as spool_mod

    monkeypatch.setattr(spool_mod, "FREE_FILES", 3)
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    qids = [await _queue(files) for _ in range(5)]
    for qid in qids:
        await files.remove(qid)
    assert len(os.listdir(files.free_dir)) == 3 and os.listdir(files.msg_dir) == []
    # A restart (or the CLI) adopts what is there; extras beyond the bound go.
    for i in range(2):
        open(os.path.join(files.free_dir, f"stray{i}"), "wb").close()
    again = SpoolFiles(files.root, fsync=False)
    assert again.load_all_sync() == ([], [])
    assert len(os.listdir(files.free_dir)) == 3
    inodes = {os.stat(os.path.join(files.free_dir, n)).st_ino for n in os.listdir(files.free_dir)}
    new = [await _queue(again) for _ in range(4)]
    used = {os.stat(again.message_path(q)).st_ino for q in new}
    assert inodes <= used and os.listdir(files.free_dir) == []


def test_a_free_file_claimed_elsewhere_is_skipped(tmp_path):
    """Claiming is a rename: a name another process took (ENOENT) is skipped, and with
    none left the commit creates a file as before."""
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    open(os.path.join(files.free_dir, "gone"), "wb").close()
    open(os.path.join(files.free_dir, "kept"), "wb").close()
    files.load_all_sync()
    os.unlink(os.path.join(files.free_dir, sorted(files._free)[-1]))  # taken by another
    envs = []
    for i in range(3):
        env = Envelope(id=f"0000000000A0000000{i}", sender="a@b", arrival=time.time(),
                       size=4, recipients=[RecipientState("x@y")])
        files.commit_sync(os.path.join(files.tmp_dir, f"t{i}"), env, b"m%d\r\n" % i)
        envs.append(env)
    assert os.listdir(files.free_dir) == []
    loaded, problems = files.load_all_sync()
    assert [e.id for e in loaded] == [e.id for e in envs] and problems == []
    for env in envs:
        raw = open(files.message_path(env.id), "rb").read()
        assert raw[env.offset:] == b"m%s\r\n" % env.id[-1:].encode()


@pytest_twisted.ensureDeferred
async def test_prepared_message_is_durable_but_held_until_release_or_withdraw(tmp_path):
    files = SpoolFiles(str(tmp_path / "q"), fsync=True)
    files.ensure_sync()
    handed = []
    kept = SpoolWriter(files, "a@b", None, None, handed.append, time.time)
    kept.write(b"Subject: kept\r\n\r\nx\r\n")
    dropped = SpoolWriter(files, "a@b", None, None, handed.append, time.time)
    dropped.write(b"Subject: dropped\r\n\r\ny\r\n")
    q1 = await kept.prepare([QueueRecipient("x@y")])
    q2 = await dropped.prepare([QueueRecipient("x@y")])
    assert handed == [] and sorted(os.listdir(files.msg_dir)) == sorted([q1, q2])
    kept.release()
    await dropped.withdraw()
    assert [e.id for e in handed] == [q1] and os.listdir(files.msg_dir) == [q1]
    with pytest.raises(RuntimeError):
        kept.release()


@pytest_twisted.ensureDeferred
async def test_a_reader_of_a_recycled_file_never_gets_the_next_messages_bytes(tmp_path):
    """Local delivery, DSNs and the relay read through MessageFile: once the message is
    removed (its inode then refilled by the next commit), a read fails instead."""
    from mailhost.outbound.spool import MessageFile, MessageGone

    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    qid = await _queue(files, b"Subject: first\r\n\r\n" + b"a" * 100 + b"\r\n")
    env = files.load_envelope_sync(qid)
    f = MessageFile(files.message_path(qid))
    f.seek(env.offset)
    assert f.read(9) == b"Subject: "
    await files.remove(qid)
    qid2 = await _queue(files, b"Subject: second\r\n\r\n" + b"b" * 100 + b"\r\n")
    assert os.stat(files.message_path(qid2)).st_ino == os.fstat(f._f.fileno()).st_ino
    with pytest.raises(MessageGone):
        f.read(50)
    f.close()


@pytest_twisted.ensureDeferred
async def test_a_free_name_still_linked_to_a_queued_message_is_not_reused(tmp_path):
    """The claim renames free/X to tmp/ and fsyncs only msg/ after its own rename; on a
    file system without a journal a power cut can bring free/X back next to msg/B, the
    same inode (fsck counts both links). Claiming it then would empty msg/B, an
    acknowledged message: a free file with another link is dropped, not reused."""
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    body = b"Subject: acked\r\n\r\n" + b"k" * 3000 + b"\r\n"
    qid = await _queue(files, body)
    os.link(files.message_path(qid), os.path.join(files.free_dir, "0000000000Z00000000"))
    again = SpoolFiles(files.root, fsync=False)
    [loaded], _ = again.load_all_sync()
    qid2 = await _queue(again, b"Subject: new\r\n\r\nn\r\n")
    raw = open(again.message_path(qid), "rb").read()
    assert raw[loaded.offset:] == body
    assert os.stat(again.message_path(qid)).st_nlink == 1
    assert os.stat(again.message_path(qid2)).st_ino != os.stat(again.message_path(qid)).st_ino


def test_remove_without_a_free_directory_still_removes(tmp_path):
    """`mailhost queue delete` on a queue an older version made (no free/ yet, the
    server not restarted since the upgrade): the message must go, not stay queued."""
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    env = Envelope(id="0000000000A00000001", sender="a@b", arrival=time.time(), size=4,
                   recipients=[RecipientState("x@y")])
    files.commit_sync(os.path.join(files.tmp_dir, "t"), env, b"m1\r\n")
    os.rmdir(files.free_dir)
    cli = SpoolFiles(files.root, fsync=False)
    cli.remove_sync(env.id)
    assert os.listdir(files.msg_dir) == []
    assert cli.iter_sync() == []


RECYCLER = textwrap.dedent("""
    import sys, time
    from mailhost.outbound.envelope import Envelope, RecipientState, new_queue_id
    from mailhost.outbound.spool import SpoolFiles
    files = SpoolFiles(sys.argv[1], fsync=True)
    files.load_all_sync()
    live = []
    while True:
        qid = new_queue_id()
        body = b"Subject: " + qid.encode() + b"\\r\\n\\r\\n" + qid.encode() * 400 + b"\\r\\n"
        env = Envelope(id=qid, sender="a@x.test", arrival=time.time(), size=len(body),
                       recipients=[RecipientState("b@y.test")])
        files.commit_sync(files.tmp_dir + "/" + qid + ".msg", env, body)
        print("acked", qid, flush=True)
        live.append(qid)
        if len(live) > 3:
            gone = live.pop(0)
            print("removing", gone, flush=True)
            files.remove_sync(gone)
""")


def test_killed_recycler_loses_or_mixes_no_acknowledged_message(tmp_path):
    """Commits that claim free files while delivered messages are recycled, killed with
    -9 twice: every acknowledged message not being removed is there with its own
    bytes, before and after the next run reuses what the first left in free/."""
    root = str(tmp_path / "q")
    acked: set[str] = set()
    removing: set[str] = set()
    for _run in range(2):
        proc = subprocess.Popen([sys.executable, "-c", RECYCLER, root],
                                stdout=subprocess.PIPE,
                                cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        lines = 0
        deadline = time.monotonic() + 20
        while lines < 60 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines += 1
            what, qid = line.decode().split()
            (acked if what == "acked" else removing).add(qid)
        os.kill(proc.pid, signal.SIGKILL)
        for line in proc.stdout.read().decode().splitlines():
            what, qid = line.split()
            (acked if what == "acked" else removing).add(qid)
        proc.wait(10)
        assert lines >= 60
        files = SpoolFiles(root)
        envelopes, _problems = files.load_all_sync()
        ids = {e.id for e in envelopes}
        assert acked - removing <= ids
        for e in envelopes:
            raw = open(files.message_path(e.id), "rb").read()
            assert raw[e.offset:] == (b"Subject: " + e.id.encode() + b"\r\n\r\n"
                                      + e.id.encode() * 400 + b"\r\n")
