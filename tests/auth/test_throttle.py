"""LoginThrottle: IPv6 per /64, a bounded table that never forgets every lock at once,
and the known-good pairs behind the password-check priorities (issue 17, items 9, 10).

The socket-level behaviour (lockout shared by the protocols, delays) is in
tests/security/test_throttling.py; loopback has one IPv6 address only (::1), so the
/64 grouping is shown here on the throttle itself.
"""

from __future__ import annotations

from mailhost.auth.throttle import FAILING, KNOWN_GOOD, KNOWN_USER, NO_FAILURES, LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ipv6_failures_count_per_64():
    t = LoginThrottle(max_failures=3, clock=Clock())
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::dead", "2001:db8:1:2:ffff::9"):
        t.failed(host)
    assert t.locked("2001:db8:1:2::4242")
    assert not t.locked("2001:db8:1:3::1")  # the next /64 is another client
    assert t.delay("2001:db8:1:2:1::1") > 0


def test_ipv4_mapped_counts_as_ipv4():
    t = LoginThrottle(max_failures=2, clock=Clock())
    t.failed("::ffff:192.0.2.7")
    t.failed("192.0.2.7")
    assert t.locked("192.0.2.7")


def test_full_table_evicts_the_oldest_never_every_lock():
    """Before the fix a full table was clear()ed: a flood from fresh addresses unlocked
    every locked one at once."""
    clock = Clock()
    t = LoginThrottle(max_failures=2, clock=clock, max_tracked=10)
    locked = [f"192.0.2.{i}" for i in range(1, 6)]
    for host in locked:
        t.failed(host)
        t.failed(host)
    assert all(t.locked(h) for h in locked)
    for i in range(200):  # a flood of one failure each from new addresses
        clock.now += 0.01
        t.failed(f"198.51.100.{i % 250}" if i < 250 else f"203.0.113.{i}")
    assert all(t.locked(h) for h in locked), "a flood of new addresses unlocked them"
    assert len(t._records) + len(t._locked) <= 10


def test_when_only_locks_are_tracked_the_oldest_lock_goes_first():
    clock = Clock()
    t = LoginThrottle(max_failures=1, clock=clock, max_tracked=3)
    for i in range(1, 5):
        clock.now += 1
        t.failed(f"192.0.2.{i}")
    assert not t.locked("192.0.2.1")
    assert all(t.locked(f"192.0.2.{i}") for i in (2, 3, 4))


def test_priority_known_good_then_clean_then_failing():
    clock = Clock()
    t = LoginThrottle(max_failures=5, clock=clock, known_good_ttl=3600)
    assert t.priority("192.0.2.1", "alice@example.test") == NO_FAILURES
    t.succeeded("192.0.2.1", "alice@example.test")
    assert t.priority("192.0.2.1", "Alice@Example.test") == KNOWN_GOOD
    assert t.priority("192.0.2.2", "alice@example.test") == KNOWN_USER  # other client
    assert t.priority("192.0.2.1", "bob@example.test") == NO_FAILURES  # other user
    t.failed("192.0.2.1")
    assert t.priority("192.0.2.1", "alice@example.test") == FAILING + 1
    t.succeeded("192.0.2.1", "alice@example.test")
    clock.now += 3601
    assert t.priority("192.0.2.1", "alice@example.test") == NO_FAILURES
