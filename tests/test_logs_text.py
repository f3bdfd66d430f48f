"""The fast text log format writes exactly what twistd's own format writes."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure

from mailhost.logs import ClassicTextFormat


def _event(**fields):
    base = {"log_time": time.time(), "log_namespace": "mailhost.test",
            "log_level": LogLevel.info}
    base.update(fields)
    return base


@pytest.mark.parametrize("event", [
    _event(log_format="smtp {tid} client={client} rcpts={rcpts} size={size}",
           tid="T1", client="127.0.0.1", rcpts=["a@x", "b@y"], size=4096),
    _event(log_format="two\nlines {x!r}", x="q"),
    _event(log_format="system given", log_system="SMTP,3,127.0.0.1"),
    _event(log_format="no level", log_level=None),
    _event(log_format=""),
    _event(log_format="call {f()}", f=lambda: "syntax"),
    _event(log_format="missing {nope}"),
    _event(log_format="attr {obj.real} item {seq[1]}", obj=3, seq=[0, 9]),
    {"log_format": "no time"},
    _event(log_format=None, message=("legacy",)),
])
def test_same_text_as_twisted(event):
    assert ClassicTextFormat()(event) == formatEventAsClassicLogText(event)


def test_failure_keeps_the_traceback():
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        event = _event(log_format="boom", log_failure=Failure())
    text = ClassicTextFormat()(event)
    assert text == formatEventAsClassicLogText(event)
    assert "ZeroDivisionError" in text


def test_timestamp_follows_the_clock():
    fmt = ClassicTextFormat()
    now = time.time()
    for when in (now, now + 0.5, now + 1.2, now + 3600):
        event = _event(log_format="tick", log_time=when)
        assert fmt(event) == formatEventAsClassicLogText(event)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60),
       st.dictionaries(st.sampled_from(["a", "b", "c"]), st.text(max_size=10)))
def test_any_format_string_matches_twisted(fmt, fields):
    event = _event(log_format=fmt, **fields)
    assert ClassicTextFormat()(event) == formatEventAsClassicLogText(event)


def test_repeated_identical_errors_are_rate_limited():
    from mailhost.logs import RepeatLimiter

    out = []
    limiter = RepeatLimiter(out.append, burst=5, interval=60.0)
    t0 = 1_000_000.0
    for i in range(200):  # a reconnect storm's worth of one failure
        limiter(_event(log_format="outbound: {d} failed: refused", d="b.test",
                       log_level=LogLevel.warn, log_time=t0 + i * 0.1))
    limiter(_event(log_format="outbound: {d} failed: refused", d="c.test",
                   log_level=LogLevel.warn, log_time=t0 + 20))  # other text: passes
    for _ in range(50):
        limiter(_event(log_format="info {i}", i=0, log_time=t0 + 21))  # info: never held
    assert len(out) == 5 + 1 + 50
    limiter(_event(log_format="outbound: {d} failed: refused", d="b.test",
                   log_level=LogLevel.warn, log_time=t0 + 61))
    summary, again = out[-2:]
    assert "repeated 195 more times" in ClassicTextFormat()(summary)
    assert again["d"] == "b.test"


def test_log_file_rotation_is_bounded(tmp_path, monkeypatch):
    import signal

    from mailhost import logs

    monkeypatch.setattr(logs, "_rotation", (65536, 3))
    old = signal.getsignal(signal.SIGUSR1)
    try:
        f = logs._log_file({"logfile": str(tmp_path / "twistd.log"), "nodaemon": True})
        line = "x" * 1000 + "\n"
        for _ in range(2000):  # 2 MB: about 30 rotations at 64 KiB
            f.write(line)
        f.close()
    finally:
        signal.signal(signal.SIGUSR1, old)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["twistd.log", "twistd.log.1", "twistd.log.2", "twistd.log.3"]
    assert logs._log_file({"nodaemon": True}) is __import__("sys").stdout


_TURN_SCRIPT = r'''
import signal
import threading
from twisted.internet import reactor
from mailhost.logs import TurnFlushedObserver

class Out:
    encoding = "utf-8"
    def __init__(self):
        self.writes = []
        self.signal_in_write = False
    def write(self, text):
        self.writes.append(text)
        if self.signal_in_write:  # a signal arriving mid-write (no deadlock)
            self.signal_in_write = False
            signal.raise_signal(signal.SIGUSR2)
    def flush(self):
        pass

out = Out()
log = TurnFlushedObserver(out, lambda event: event["text"] + "\n")
log({"text": "before"})
assert out.writes == ["before\n"], out.writes
signal.signal(signal.SIGUSR2, lambda *_: log({"text": "signal"}))

def turn():
    log({"text": "a"})
    log({"text": "b"})
    assert out.writes == ["before\n"], out.writes
    t = threading.Thread(target=log, args=({"text": "thread"},))
    t.start()
    t.join()
    assert out.writes == ["before\n", "thread\n"], out.writes
    signal.raise_signal(signal.SIGUSR2)  # its handler logs, as twistd's do
    reactor.callLater(0.05, signalled)

def signalled():
    assert out.writes[-1] == "a\nb\nsignal\n", out.writes
    out.signal_in_write = True
    log({"text": "c"})
    log({"text": "d"})
    reactor.callLater(0.05, next_turn)

def next_turn():
    assert out.writes[-2:] == ["c\nd\n", "signal\n"], out.writes
    log({"text": "last"})
    reactor.stop()

reactor.callWhenRunning(turn)
reactor.run()
assert out.writes[-1] == "last\n", out.writes
log({"text": "after"})
assert out.writes[-1] == "after\n", out.writes
print("ok")
'''


def test_log_lines_of_one_reactor_turn_go_out_in_one_write():
    """Issue 18: a write and flush per event cost the SMTP listener a system call per
    message; the reactor's lines wait for the end of its turn, in order with a worker
    thread's, and nothing waits once the reactor stops."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _TURN_SCRIPT], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
