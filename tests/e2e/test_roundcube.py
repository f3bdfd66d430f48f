"""Roundcube (Debian's package, SQLite) in headless Chromium against the test mail host.

A real webmail lists a 1,000-message INBOX sorted by date and by sender, then in
thread view; Roundcube asks the server to sort (SORT, SORT=DISPLAY) and to thread
(THREAD=REFERENCES), and its IMAP debug log shows that it did. Roundcube runs under
``php -S`` on a loopback port with a private config, database, log and temp directory
in tmp_path; Chromium runs headless with a fresh profile. See docs/roundcube.md.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from tests.ports import free_port

USER = "alice@example.test"
PASSWORD = "secret"
N_MESSAGES = 1000
PAGE = 50
ROUNDCUBE = Path("/var/lib/roundcube")  # Debian's tree: public_html, program, skins
DEFAULTS = Path("/etc/roundcube/defaults.inc.php")
SCHEMA = Path("/usr/share/roundcube/SQL/sqlite.initial.sql")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 60  # seconds for any one page state; the whole test takes well under a minute

# Display names sort differently from their mailboxes, so a FROM sort on the wrong
# key (mailbox instead of display name, SORT=DISPLAY) shows in the first rows.
NAMES = ["Zoe Adams", "yann Baker", "Xavier Clark", "wanda Davis", "Victor Evans",
         "ursula Foster", "Tom Garcia", "sara Hughes", "Rob Irving", "quinn Jones",
         "Paul King", "olga Lewis", "Nina Moore", "mark Nolan", "Lena Ortiz",
         "kurt Price", "Julia Quinn", "ivan Reed", "Hana Scott", "gus Turner"]


@dataclass(frozen=True)
class Mail:
    uid: int
    sender: str  # display name
    subject: str
    date: datetime
    message_id: str
    parent: str | None = None  # Message-ID this one replies to


def _corpus() -> tuple[list[Mail], list[Mail]]:
    """1,000 messages in delivery (UID) order, and one known thread (root first).

    Dates are distinct and shuffled against UIDs; 30 threads of 2-4 replies are spread
    through the folder; the known thread's messages are the newest ones, so it tops
    the date-sorted thread list.
    """
    rnd = random.Random(16)
    base = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    minutes = rnd.sample(range(N_MESSAGES * 10), N_MESSAGES)
    known_len = 4  # root, a reply, a reply to the reply, a second reply to the root
    top = sorted(minutes)[-known_len:]
    rest = [m for m in minutes if m not in top]
    mails: list[Mail] = []
    pending: list[tuple[str, int, str | None]] = []  # subject, minute, parent Message-ID
    # Known thread: root then replies, with increasing dates.
    known_ids = [f"<known-{i}@example.test>" for i in range(known_len)]
    known_parents = [None, known_ids[0], known_ids[1], known_ids[0]]
    subjects = [f"Report {i:04d} on {rnd.choice(['budget', 'travel', 'lunch', 'build'])}"
                for i in range(N_MESSAGES)]
    for i, minute in enumerate(rest):
        pending.append((subjects[i], minute, None))
    # Turn some of the plain messages into replies of earlier ones (by date).
    by_date = sorted(range(len(pending)), key=lambda k: pending[k][1])
    for t in range(30):
        root = by_date[t * 30]
        replies = by_date[t * 30 + 1: t * 30 + 1 + rnd.randint(2, 4)]
        for r in replies:
            subject, minute, _ = pending[r]
            pending[r] = ("Re: " + pending[root][0], minute, f"<m{root}@example.test>")
    entries: list[tuple[str, int, str, str | None]] = [
        (s, m, f"<m{k}@example.test>", p) for k, (s, m, p) in enumerate(pending)]
    for k in range(known_len):
        subject = "Known thread" if k == 0 else "Re: Known thread"
        entries.append((subject, top[k], known_ids[k], known_parents[k]))
    order = list(range(len(entries)))
    rnd.shuffle(order)
    for uid, e in enumerate(order, start=1):
        subject, minute, mid, parent = entries[e]
        mails.append(Mail(uid, NAMES[rnd.randrange(len(NAMES))], subject,
                          base + timedelta(minutes=minute), mid, parent))
    known = sorted((m for m in mails if m.message_id in known_ids),
                   key=lambda m: known_ids.index(m.message_id))
    return mails, known


def _raw(mail: Mail, by_id: dict[str, Mail]) -> bytes:
    local = mail.sender.split()[1].lower() + "." + mail.sender.split()[0].lower()
    headers = [
        f"From: {mail.sender} <{local}@senders.test>",
        f"To: Alice <{USER}>",
        f"Subject: {mail.subject}",
        f"Date: {format_datetime(mail.date)}",
        f"Message-ID: {mail.message_id}",
    ]
    if mail.parent:
        chain = [mail.parent]
        while by_id[chain[0]].parent:
            chain.insert(0, by_id[chain[0]].parent)
        headers += [f"In-Reply-To: {mail.parent}", f"References: {' '.join(chain)}"]
    body = f"Message {mail.uid} from {mail.sender}.\r\n"
    return ("\r\n".join(headers) + "\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n\r\n" + body).encode()



def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"php -S exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def _need(path: Path | str) -> None:
    if not Path(path).exists():
        pytest.fail(f"{path} is missing (CI installs it: see .ci/install)")


@contextlib.contextmanager
def _roundcube(tmp: Path, imap_port: int) -> Iterator[tuple[str, Path]]:
    """Roundcube under ``php -S`` with everything of its own in ``tmp``; (URL, log dir)."""
    for path in (ROUNDCUBE / "public_html" / "index.php", DEFAULTS, SCHEMA):
        _need(path)
    php = shutil.which("php")
    if php is None:
        pytest.fail("php is not installed (CI installs php-cli: see .ci/install)")
    config, logs, temp = tmp / "config", tmp / "logs", tmp / "temp"
    for d in (config, logs, temp):
        d.mkdir()
    db = tmp / "roundcube.db"  # schema from Debian's SQL file
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.executescript(SCHEMA.read_text())
    # Roundcube reads defaults.inc.php then config.inc.php from its config dir.
    (config / "defaults.inc.php").symlink_to(DEFAULTS)
    (config / "config.inc.php").write_text(f"""<?php
$config = [];
$config['db_dsnw'] = 'sqlite:///{db}?mode=0600';
$config['imap_host'] = '127.0.0.1:{imap_port}';
$config['imap_timeout'] = 20;
$config['imap_debug'] = true;
$config['smtp_host'] = '';
$config['des_key'] = 'mailhost-roundcube-test!';
$config['plugins'] = [];
$config['skin'] = 'elastic';
$config['log_driver'] = 'file';
$config['log_dir'] = '{logs}/';
$config['temp_dir'] = '{temp}/';
$config['enable_spellcheck'] = false;
$config['enable_installer'] = false;
$config['login_rate_limit'] = 0;
$config['mail_pagesize'] = {PAGE};
$config['autoexpand_threads'] = 1;
$config['refresh_interval'] = 0;
$config['check_all_folders'] = false;
$config['messages_cache'] = false;
$config['imap_cache'] = null;
""")
    port = free_port()
    env = {**os.environ, "ROUNDCUBE_CONFIG_DIR": str(config),
           "RCUBE_CONFIG_PATH": str(config), "PHP_CLI_SERVER_WORKERS": "2"}
    log = open(tmp / "php-server.log", "wb")
    proc = subprocess.Popen(
        [php, "-S", f"127.0.0.1:{port}", "-t", str(ROUNDCUBE / "public_html")],
        cwd=ROUNDCUBE / "public_html", env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        _wait_port(port, proc)
        yield f"http://127.0.0.1:{port}/", logs
    finally:
        # php -S with workers forks: end its whole session (only what we started).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


@contextlib.contextmanager
def _chromium(tmp: Path) -> Iterator[object]:
    for path in (CHROMIUM, CHROMEDRIVER):
        _need(path)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000",
                f"--user-data-dir={tmp / 'chromium-profile'}"):
        options.add_argument(arg)
    service = Service(CHROMEDRIVER, log_output=str(tmp / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(WAIT)
        driver.set_script_timeout(WAIT)
        yield driver
    finally:
        driver.quit()  # ends chromedriver and the browser it started


_ROWS_JS = """
const list = rcmail.message_list;
if (!list || rcmail.busy) return null;
const out = [];
for (const tr of document.querySelectorAll('#messagelist tbody tr')) {
  const uid = tr.uid || tr.id.replace(/^rcmrow/, '');
  const row = list.rows[uid] || {};
  const text = (sel) => ((tr.querySelector(sel) || {}).textContent || '').trim();
  out.push({uid: String(uid), depth: row.depth || 0,
            parent: row.parent_uid ? String(row.parent_uid) : null,
            hidden: tr.style.display === 'none',
            subject: text('td.subject span.subject'), sender: text('td.subject span.adr')});
}
return {sort: rcmail.env.sort_col + '_' + rcmail.env.sort_order,
        threading: !!rcmail.env.threading, count: rcmail.env.messagecount, rows: out};
"""


def _list_state(driver, sort: str, threading: bool) -> dict:
    """Wait until the message list shows ``sort`` (col_ORDER) in the given mode."""
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        state = d.execute_script(_ROWS_JS)
        if (state and state["sort"] == sort and state["threading"] == threading
                and state["rows"]):
            return state
        return False

    return WebDriverWait(driver, WAIT, poll_frequency=0.2).until(ready)


def _set_list(driver, col: str, order: str, threads: bool) -> dict:
    """Choose sorting column, order and list mode in the list options dialog, as a user."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(driver, WAIT)
    wait.until(ec.element_to_be_clickable((By.ID, "listmenulink"))).click()
    dialog = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".ui-dialog")))
    Select(dialog.find_element(By.NAME, "sort_col")).select_by_value(col)
    Select(dialog.find_element(By.NAME, "sort_ord")).select_by_value(order)
    Select(dialog.find_element(By.NAME, "mode")).select_by_value(
        "threads" if threads else "list")
    dialog.find_element(By.CSS_SELECTOR, ".ui-dialog-buttonset button.mainaction").click()
    wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, ".ui-dialog")))
    return _list_state(driver, f"{col}_{order}", threads)


def _imap_log(logs: Path) -> str:
    """Roundcube's IMAP debug log (``imap_debug``): what it sent and what it got."""
    path = logs / "imap.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _server_did_the_work(log: str) -> None:
    """No SORT/THREAD was refused (Roundcube would then fetch every message's headers)."""
    failed = re.findall(r"S: A\d+ (?:NO|BAD) .*", log)
    assert not failed, failed[:3]
    assert "FETCH 1:*" not in log and f"FETCH 1:{N_MESSAGES} " not in log


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.mailhost(users={USER: PASSWORD}, protocols=("imap",))
def test_roundcube_sorts_and_threads_on_the_server(mailhost_sync, tmp_path):
    mails, known = _corpus()
    by_id = {m.message_id: m for m in mails}
    for mail in mails:
        assert mailhost_sync.deliver(USER, _raw(mail, by_id)) == [mail.uid]

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    with _roundcube(tmp_path, mailhost_sync.imap_port) as (url, logs), \
            _chromium(tmp_path) as driver:
        driver.get(url)
        wait = WebDriverWait(driver, WAIT)
        wait.until(ec.presence_of_element_located((By.ID, "rcmloginuser"))).send_keys(USER)
        driver.find_element(By.ID, "rcmloginpwd").send_keys(PASSWORD)
        driver.find_element(By.ID, "rcmloginsubmit").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#messagelist tbody tr")))

        # Newest first: SORT (DATE) reversed by Roundcube for DESC.
        state = _set_list(driver, "date", "DESC", threads=False)
        assert int(state["count"]) == N_MESSAGES
        newest = sorted(mails, key=lambda m: m.date, reverse=True)[:PAGE]
        assert [r["uid"] for r in state["rows"]] == [str(m.uid) for m in newest]
        assert [(r["sender"], r["subject"]) for r in state["rows"]] == [
            (m.sender, m.subject) for m in newest]
        assert "SORT (DATE)" in _imap_log(logs)

        # By sender, A to Z by display name (SORT=DISPLAY); ties in UID order (RFC 5256).
        state = _set_list(driver, "from", "ASC", threads=False)
        first = sorted(mails, key=lambda m: (m.sender.casefold(), m.uid))[:PAGE]
        assert [r["uid"] for r in state["rows"]] == [str(m.uid) for m in first]
        assert [(r["sender"], r["subject"]) for r in state["rows"]] == [
            (m.sender, m.subject) for m in first]
        assert "SORT (DISPLAYFROM)" in _imap_log(logs)

        # Thread view: THREAD=REFERENCES; the known thread nests its replies.
        state = _set_list(driver, "date", "DESC", threads=True)
        assert "THREAD REFERENCES" in _imap_log(logs)
        rows = {r["uid"]: r for r in state["rows"]}
        root, reply, reply2, sibling = (str(m.uid) for m in known)
        assert state["rows"][0]["uid"] == root
        assert rows[root]["depth"] == 0
        assert rows[reply]["parent"] == root and rows[reply]["depth"] == 1
        assert rows[reply2]["parent"] == reply and rows[reply2]["depth"] == 2
        assert rows[sibling]["parent"] == root and rows[sibling]["depth"] == 1
        assert not any(rows[u]["hidden"] for u in (root, reply, reply2, sibling))
        # Shown as a tree, in date order under each parent (RFC 5256 REFERENCES).
        assert [r["uid"] for r in state["rows"][:4]] == [root, reply, reply2, sibling]
        _server_did_the_work(_imap_log(logs))
        errors = logs / "errors.log"  # Roundcube's own complaints (IMAP errors among them)
        assert not errors.exists(), errors.read_text(errors="replace")[-2000:]
