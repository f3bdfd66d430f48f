"""docs/embedding.md cannot drift: every code block in it runs here, as written.

Each ``python`` block starts with a comment naming its file: a ``.py`` is run as a
script, and the ``text`` block after it (before the next ``python`` block) is exactly
what it prints; a ``.tac`` is run under ``twistd -n -y`` (with its fixed ports swapped
for free ones, so parallel runs cannot collide) and a mail is sent to it and read back.
A block of any other kind fails the test, so no snippet goes unrun. The blocks use
mailhost only through the front door, ``import mailhost``, and only names it exports
(regression: the .tac excerpt used ``service`` without importing it, and nothing ran it).
"""

from __future__ import annotations

import ast
import imaplib
import os
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mailhost
from tests.mailhost_process import TWISTD, free_port

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "embedding.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
NAME = re.compile(r"# (\S+\.(?:py|tac))\n")


def snippets() -> dict[str, tuple[str, str | None]]:
    """name -> (code, what it prints: the text block that follows it, if any)."""
    out: dict[str, tuple[str, str | None]] = {}
    last = None
    for lang, body in FENCE.findall(DOC.read_text()):
        if lang == "python":
            m = NAME.match(body)
            assert m, f"a python block must start with '# <file name>': {body[:60]!r}"
            assert m.group(1) not in out, f"two blocks named {m.group(1)}"
            last = m.group(1)
            out[last] = (body, None)
        elif lang == "text":
            assert last is not None and out[last][1] is None, f"stray text block {body!r}"
            out[last] = (out[last][0], body)
        else:
            raise AssertionError(f"a ```{lang} block that no test runs: {body[:60]!r}")
    return out


def test_every_block_is_one_this_module_runs():
    names = set(snippets())
    assert names == {"app.tac", "embed_twisted_checker.py", "embed_custom_auth.py"}, names
    for name, (_code, output) in snippets().items():
        assert name.endswith(".tac") or output is not None, f"{name}: no 'It prints' block"


def test_examples_use_only_the_front_door():
    for name, (code, _output) in snippets().items():
        tree = ast.parse(code)
        modules = {node.module for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and node.module}
        modules |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for a in node.names}
        ours = {m for m in modules if m.split(".")[0] == "mailhost"}
        assert ours == {"mailhost"}, (name, ours)
        used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name) and node.value.id == "mailhost"}
        assert used <= set(mailhost.__all__), (name, used - set(mailhost.__all__))
    # And the prose names nothing below the package: `mailhost.x.y` only for mailhost.testing.
    text = DOC.read_text()
    deep = set(re.findall(r"`mailhost\.([a-z_]+)\.", text))
    assert deep <= {"testing"}, deep
    named = set(re.findall(r"`mailhost\.([A-Za-z_]+)", text))
    assert named <= {*mailhost.__all__, "__all__"}, named - set(mailhost.__all__)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]))


@pytest.mark.parametrize("name", ["embed_twisted_checker.py", "embed_custom_auth.py"])
def test_script_runs_as_written_and_prints_what_the_page_says(name, tmp_path):
    code, output = snippets()[name]
    script = tmp_path / name
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == output, result.stdout + result.stderr
    # Memory store, own checker, outbound off: nothing was written next to the script.
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_app_tac_runs_under_twistd(tmp_path):
    code, _output = snippets()["app.tac"]
    smtp, imap = free_port(), free_port()
    for fixed, port in (("tcp:2525:", smtp), ("tcp:2143:", imap)):
        assert fixed in code
        code = code.replace(fixed, f"tcp:{port}:")
    (tmp_path / "app.tac").write_text(code)
    log = tmp_path / "twistd.log"
    proc = subprocess.Popen([sys.executable, TWISTD, "-n", "--pidfile=", "--logfile", str(log),
                             "-y", "app.tac"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        password = None
        while password is None:
            assert proc.poll() is None, log.read_text() if log.exists() else "no log"
            assert time.monotonic() < deadline, "app.tac did not start"
            text = log.read_text() if log.exists() else ""
            m = re.search(r"created postmaster@example\.test with password (\S+) ", text)
            password = m.group(1) if m else None
            time.sleep(0.1)
        while True:
            try:
                s = smtplib.SMTP("127.0.0.1", smtp, timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline, "app.tac does not answer SMTP"
                time.sleep(0.1)
        with s:
            s.sendmail("x@elsewhere.test", ["postmaster@example.test"],
                       b"Subject: from app.tac\r\n\r\nhi\r\n")
        m = imaplib.IMAP4("127.0.0.1", imap, timeout=30)
        m.login("postmaster@example.test", password)
        m.select("INBOX")
        _, data = m.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")
        m.logout()
    finally:
        proc.kill()
        proc.wait(10)
    assert data[0][1].strip() == b"Subject: from app.tac"
    assert (tmp_path / "mailhost-data" / "passwd").exists()
    assert not (tmp_path / "mailhost-data" / "queue").exists()  # outbound.enabled=false


def test_the_command_that_finds_the_packaged_tac_finds_it(tmp_path):
    """The page's shell line runs ``python -c '...'`` to find embedded.tac: run that part."""
    m = re.search(r"""twistd -n -y "\$\(python -c '([^']+)'\)\"""", DOC.read_text())
    assert m, "the twistd line for the packaged embedded.tac is gone"
    result = subprocess.run([sys.executable, "-c", m.group(1)], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.name == "embedded.tac" and "mailhost.makeService" in path.read_text()
