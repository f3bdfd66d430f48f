"""The page in headless Chromium, against a real test host: mail sent over SMTP during
the test appears without a reload; opening it shows its subject, text part and
attachment name; a script in an HTML message never runs (neither in the page's
sandboxed frame nor when its HTML endpoint is opened directly)."""

from __future__ import annotations

import pytest

from tests.web.browser import chromium
from tests.web.helpers import message, request, send

WAIT = 15.0


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page re-renders its list on every event (replaceChildren): an element read a
    # moment ago may be gone, which only means "look again".
    return WebDriverWait(driver, WAIT, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,)
                         ).until(condition, what)


def _open_page(driver, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait(driver, lambda d: d.find_element(By.ID, "live").text == "live",
          "the event stream to open")


def _row(driver, subject: str):
    from selenium.webdriver.common.by import By

    for li in driver.find_elements(By.CSS_SELECTOR, "#messages li"):
        if li.find_element(By.CLASS_NAME, "subject").text == subject:
            return li
    return False


@pytest.mark.mailhost(web=True, users={"alice@example.test": "pw"})
def test_new_mail_appears_without_reload_and_opens(mailhost_sync, browser):
    from selenium.webdriver.common.by import By

    _open_page(browser, mailhost_sync.web_url)
    assert browser.find_elements(By.CSS_SELECTOR, "#messages li") == []
    browser.execute_script("window.__sameDocument = 'yes';")

    send(mailhost_sync.smtp_port,
         message("Invoice 42", "Dear Alice,\nyour invoice is attached.\n",
                 attachment=("invoice-42.pdf", b"%PDF-1.4 fake")))
    row = _wait(browser, lambda d: _row(d, "Invoice 42"), "the new message in the list")
    assert browser.execute_script("return window.__sameDocument") == "yes"  # no reload
    assert "bob@example.test" in row.text

    row.click()
    _wait(browser, lambda d: d.find_element(By.ID, "subject").text == "Invoice 42",
          "the message view")
    assert "your invoice is attached." in browser.find_element(By.ID, "text").text
    attachments = browser.find_element(By.ID, "attachments").text
    assert "invoice-42.pdf" in attachments

    # Search narrows the list; the raw tab shows the source.
    send(mailhost_sync.smtp_port, message("Weekly report", "numbers\n"))
    _wait(browser, lambda d: _row(d, "Weekly report"), "the second message")
    browser.find_element(By.ID, "search").send_keys("subject:invoice")
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#messages li")) == 1,
          "the search to narrow the list")
    browser.find_element(By.CSS_SELECTOR, '.subtab[data-part="raw"]').click()
    _wait(browser, lambda d: "Subject: Invoice 42" in d.find_element(By.ID, "raw").text,
          "the raw source")

    # Delete from the page: gone from the store and the list.
    browser.find_element(By.ID, "delete").click()
    _wait(browser, lambda d: not _row(d, "Invoice 42"), "the message to leave the list")
    left = request(mailhost_sync.web_url + "/api/messages").json()["messages"]
    assert [m["subject"] for m in left] == ["Weekly report"]


SCRIPT = ("<html><head><title>mail</title></head><body><p id='shown'>Hello in HTML</p>"
          "<script>document.title = 'pwned'; try { parent.document.title = 'pwned'; }"
          " catch (e) {} try { top.__pwned = 1; } catch (e) {}"
          " try { document.cookie = 'pwned=1'; } catch (e) {}</script>"
          "<img src='x' onerror=\"document.title = 'pwned'\"></body></html>")


@pytest.mark.mailhost(web=True, users={"alice@example.test": "pw"})
def test_a_script_in_an_html_message_does_not_run(mailhost_sync, browser):
    from selenium.webdriver.common.by import By

    _open_page(browser, mailhost_sync.web_url)
    send(mailhost_sync.smtp_port, message("Scripted", "plain version\n", html=SCRIPT))
    _wait(browser, lambda d: _row(d, "Scripted"), "the message in the list").click()
    _wait(browser, lambda d: d.find_element(By.ID, "subject").text == "Scripted",
          "the message view")
    browser.find_element(By.CSS_SELECTOR, '.subtab[data-part="html"]').click()
    frame = browser.find_element(By.ID, "html-frame")
    assert frame.get_attribute("sandbox") == ""  # no allow-scripts, no allow-same-origin
    browser.switch_to.frame(frame)
    try:
        _wait(browser, lambda d: d.find_elements(By.ID, "shown"), "the HTML body to render")
        assert browser.find_element(By.ID, "shown").text == "Hello in HTML"
        assert browser.execute_script("return document.title") == "mail"
    finally:
        browser.switch_to.default_content()
    assert browser.title == "mailhost"
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.get_cookies() == []

    # Opened on its own, the HTML endpoint's CSP (sandbox, no script-src) still stops it.
    listed = request(mailhost_sync.web_url + "/api/messages").json()["messages"]
    browser.get(f"{mailhost_sync.web_url}/api/messages/{listed[0]['id']}/html")
    _wait(browser, lambda d: d.find_elements(By.ID, "shown"), "the HTML body")
    assert browser.title == "mail"
    assert browser.get_cookies() == []


@pytest.mark.mailhost(web=True, outbound=True, users={"alice@example.test": "pw"})
def test_faults_queue_and_release_panels(mailhost_sync, browser):
    import smtplib

    from selenium.webdriver.common.by import By

    from mailhost.testing import running

    _open_page(browser, mailhost_sync.web_url)

    # A fault added from the page answers the next MAIL; clearing it from the page ends it.
    browser.find_element(By.CSS_SELECTOR, '.tab[data-panel="faults"]').click()
    browser.find_element(By.ID, "fault-command").send_keys("MAIL")
    browser.find_element(By.ID, "fault-code").send_keys("421")
    browser.find_element(By.ID, "fault-message").send_keys("4.3.2 chaos from the page")
    browser.find_element(By.CSS_SELECTOR, "#fault-form button[type=submit]").click()
    _wait(browser, lambda d: "smtp fail MAIL -> 421" in d.find_element(By.ID, "faults").text,
          "the fault in the list")
    with smtplib.SMTP("127.0.0.1", mailhost_sync.smtp_port, timeout=10) as s:
        s.ehlo()
        assert s.mail("bob@example.test") == (421, b"4.3.2 chaos from the page")
    browser.find_element(By.ID, "faults-clear").click()
    _wait(browser, lambda d: d.find_element(By.ID, "faults").text == "", "the list to clear")
    assert mailhost_sync.faults() == []

    # Mail for a remote domain, captured by the test host, shows in the queue panel.
    with smtplib.SMTP("127.0.0.1", mailhost_sync.submission_port, timeout=10) as s:
        s.login("alice@example.test", "pw")
        s.send_message(message("to the world", sender="alice@example.test",
                               to="someone@remote.example"))
    browser.find_element(By.CSS_SELECTOR, '.tab[data-panel="queue"]').click()
    _wait(browser, lambda d: "someone@remote.example (captured)" in
          d.find_element(By.ID, "queue").text, "the queue entry")

    # Release a stored message from the page to another SMTP server.
    browser.find_element(By.CSS_SELECTOR, '.tab[data-panel="inbox"]').click()
    send(mailhost_sync.smtp_port, message("release me"))
    with running(users={"dave@example.test": "pw"}) as other:
        _wait(browser, lambda d: _row(d, "release me"), "the message").click()
        _wait(browser, lambda d: d.find_element(By.ID, "subject").text == "release me",
              "the message view")
        browser.find_element(By.ID, "release-port").send_keys(str(other.smtp_port))
        browser.find_element(By.ID, "release-to").send_keys("dave@example.test")
        browser.find_element(By.CSS_SELECTOR, "#release-form button").click()
        got = other.wait_for_messages(1, timeout=15)
        assert got[0].subject == "release me"
        _wait(browser, lambda d: "Released to 127.0.0.1:" in d.find_element(By.ID, "status").text,
              "the confirmation")
