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
