"""The example files of docs/testing.md (docs/examples/) run together in ONE pytest process,
with and without pytest-twisted, with xdist, in both orders and under ``-W error``: each
run finishes within its timeout with the outcomes asserted, never a hang.

The regressions of issue 20: ``pytest -p no:twisted test_welcome_sync.py
test_welcome_trial.py`` hung for ever (trial's _cleanThreads against a reactor that ran in
the host's thread); ``running()`` in a unittest ``setUp`` under pytest-twisted deadlocked;
a trial TestCase without the mixin failed with DirtyReactorAggregateError under
pytest-twisted; STARTTLS left a timer that trial called a dirty reactor.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.testing.test_docs import _plugin_args

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
SYNC, DEFERRED, TRIAL, UNITTEST = ("test_welcome_sync.py", "test_welcome_pytest_twisted.py",
                                   "test_welcome_trial.py", "test_welcome_unittest.py")
WELCOME = [SYNC, DEFERRED, TRIAL, UNITTEST]
TIMEOUT = 150  # seconds for one whole run (the machine is shared; a run takes ~5-20 s)
NEEDS_PT = "needs pytest-twisted"


def _copy_examples(tmp_path: Path) -> None:
    for path in EXAMPLES.glob("*.py"):
        shutil.copy(path, tmp_path / path.name)


def _pytest(tmp_path: Path, *args: str) -> tuple[dict[str, int], str]:
    """Run pytest in a subprocess; the outcome counts of its summary line, and its output."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(EXAMPLES.parents[1]), os.environ.get("PYTHONPATH", "")]))
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_ADDOPTS", None)
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=60",
             *_plugin_args(), *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"pytest {' '.join(args)} hung: still running after {TIMEOUT}s\n"
                    f"{e.stdout or ''}{e.stderr or ''}")
    out = result.stdout + result.stderr
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    counts = {kind.rstrip("s"): int(n) for n, kind in
              re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed)", summary)}
    assert time.monotonic() - started < TIMEOUT
    return counts, out


# (pytest arguments, the files in run order) -> every run: the same outcomes.
RUNS = {
    "pytest-twisted": ([], WELCOME),
    "pytest-twisted, reversed, -W error": (["-W", "error"], WELCOME[::-1]),
    "pytest-twisted, -n 2": (["-n", "2"], WELCOME[::-1]),
    "no:twisted, -W error": (["-p", "no:twisted", "-W", "error"], WELCOME),
    "no:twisted, reversed": (["-p", "no:twisted"], WELCOME[::-1]),
    "no:twisted, -n 2, -W error": (["-p", "no:twisted", "-n", "2", "-W", "error"], WELCOME),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_welcome_examples_together(tmp_path, name):
    args, files = RUNS[name]
    _copy_examples(tmp_path)
    counts, out = _pytest(tmp_path, *args, *files)
    if "no:twisted" in args:
        # The Twisted-API fixture cannot work without pytest-twisted: a clear error
        # naming the fix for its 2 tests; every other example passes.
        assert counts == {"passed": 8, "error": 2}, out
        assert out.count(NEEDS_PT) >= 2 and "mailhost_sync" in out, out
    else:
        assert counts == {"passed": 10}, out


@pytest.mark.slow
@pytest.mark.parametrize("twisted", [True, False], ids=["pytest-twisted", "no:twisted"])
def test_lifecycle_examples(tmp_path, twisted):
    _copy_examples(tmp_path)
    files = ["test_lifecycle_twisted.py", "test_lifecycle_sync.py"]
    if twisted:
        counts, out = _pytest(tmp_path, "-W", "error", *files)
        assert counts == {"passed": 10}, out
    else:
        counts, out = _pytest(tmp_path, "-p", "no:twisted", *files)
        assert counts == {"passed": 5, "error": 5}, out
        assert out.count(NEEDS_PT) >= 5, out


MISUSE = '''
import smtplib
import unittest

import pytest
from twisted.internet import threads
from twisted.trial import unittest as trial_unittest

from mailhost.testing import running
from mailhost.testing.trial import start_mailhost


class RunningInSetUp(unittest.TestCase):
    def setUp(self):
        ctx = running(users={"alice@example.test": "pw"})
        self.mail = ctx.__enter__()
        self.addCleanup(ctx.__exit__, None, None, None)

    def test_send(self):
        with smtplib.SMTP("127.0.0.1", self.mail.smtp_port, timeout=5) as s:
            s.noop()


@pytest.fixture
def my_host():
    with running() as host:
        yield host


def test_running_in_a_fixture(my_host):
    pass


def test_running_in_a_test_body():
    with running():
        pass


def test_leaves_a_timer_and_a_port():
    # pytest-twisted does not hold its tests to trial's clean-reactor rule.
    global PORT
    from twisted.internet import protocol, reactor

    reactor.callLater(100, lambda: None)
    PORT = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol),
                             interface="127.0.0.1")


class TrialWithoutMixin(trial_unittest.TestCase):
    async def test_start_mailhost(self):
        host = await start_mailhost(self, users={"bob@example.test": "pw"})
        def noop():
            with smtplib.SMTP("127.0.0.1", host.smtp_port, timeout=5) as s:
                return s.noop()[0]
        self.assertEqual(await threads.deferToThread(noop), 250)


class TrialCallsRunning(trial_unittest.TestCase):
    def test_running_in_trial(self):
        with running():
            pass


def test_the_port_left_earlier_is_back():
    from twisted.internet import reactor

    assert PORT in reactor.getReaders()
    PORT.stopListening()
'''


@pytest.mark.slow
def test_misuse_under_pytest_twisted_fails_fast_and_says_why(tmp_path):
    """``running()`` where pytest-twisted drives the reactor in this thread (unittest
    setUp, a fixture, a test body) or inside a trial TestCase raises ReactorInThisThread
    naming the fixes instead of deadlocking; a trial TestCase without the mixin, after
    pytest-twisted has started its reactor, passes, also when earlier pytest tests left a
    timer and a listening port in the reactor (the port is back after it)."""
    _copy_examples(tmp_path)
    (tmp_path / "test_misuse.py").write_text(MISUSE)
    counts, out = _pytest(tmp_path, "-W", "error", DEFERRED, "test_misuse.py")
    assert counts == {"passed": 5, "failed": 3, "error": 1}, out
    assert out.count("ReactorInThisThread") >= 4, out
    assert "SyncMailHostTestMixin" in out and "-p no:twisted" in out, out
    # Without pytest-twisted, the blocking ones work and trial has its reactor back; a
    # trial test that starts a blocking host in its own (reactor) thread is still refused.
    counts, out = _pytest(tmp_path, "-p", "no:twisted", "-W", "error", SYNC, "test_misuse.py")
    assert counts == {"passed": 9, "failed": 1}, out
    assert "TrialCallsRunning" in out and "start_mailhost" in out, out


@pytest.mark.slow
@pytest.mark.parametrize("twisted", [True, False], ids=["pytest-twisted", "no:twisted"])
def test_session_host_and_trial_is_a_clear_error(tmp_path, twisted):
    """A session-scoped host still runs in the reactor when trial wants it: each trial
    test fails at once, naming the fix; nothing hangs and the rest passes."""
    _copy_examples(tmp_path)
    args = [] if twisted else ["-p", "no:twisted"]
    counts, out = _pytest(tmp_path, *args, "test_lifecycle_sync.py", TRIAL, UNITTEST)
    assert counts == {"passed": 7, "failed": 3}, out
    assert out.count("ReactorConflict") >= 3 and "function-scoped fixtures" in out, out


@pytest.mark.slow
def test_examples_under_trial_and_unittest_runners(tmp_path):
    _copy_examples(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(EXAMPLES.parents[1]), os.environ.get("PYTHONPATH", "")]))
    for runner in (["-m", "twisted.trial"], ["-m", "unittest"]):
        result = subprocess.run(
            [sys.executable, "-W", "error", *runner, "test_welcome_unittest",
             "test_welcome_trial"], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=TIMEOUT)
        out = result.stdout + result.stderr
        assert result.returncode == 0 and "Ran 5 tests" in out, out
