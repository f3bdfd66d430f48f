"""The web UI's own pieces: interface conformance, the MIME reading of the message view,
and big messages parsed off the reactor thread."""

from __future__ import annotations

import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from zope.interface.verify import verifyObject

from mailhost.web import IFaultControl, IQueueListing
from mailhost.web.interfaces import FaultError
from mailhost.web.mime import INLINE_LIMIT, parse, parse_later
from tests.web.helpers import message


def test_the_implementations_provide_their_interfaces():
    from mailhost.testing.faults.control import FaultScript
    from mailhost.testing.host import _CaptureQueue
    from mailhost.web.queue import SpoolListing

    verifyObject(IFaultControl, FaultScript([]))
    verifyObject(IQueueListing, SpoolListing(object()))
    verifyObject(IQueueListing, _CaptureQueue())


def test_fault_script_validates_and_shares_the_hosts_list():
    from mailhost.testing.faults.control import FaultScript

    registry: list = []
    script = FaultScript(registry)
    fault = script.add("smtp", "fail", "rcpt", match="@blocked")
    assert registry == [fault] and fault.code == 451 and fault.command == "RCPT"
    assert script.add("imap", "delay", "greeting", seconds=0.5).seconds == 0.5
    for bad in ({"protocol": "ftp"}, {"action": "boom"}, {"command": "MAIL FROM:<x>"},
                {"times": 0}, {"code": 250}, {"seconds": -1}):
        args = {"protocol": "smtp", "action": "fail", "command": "MAIL", **bad}
        try:
            script.add(args.pop("protocol"), args.pop("action"), args.pop("command"), **args)
        except FaultError:
            continue
        raise AssertionError(f"accepted {bad}")
    assert script.clear() == 2 and registry == []


def test_parts_text_html_and_attachments():
    m = message("parts", "plain body\n", html="<b>rich</b>", attachment=("r.csv", b"a,b\n"))
    m.add_attachment(b"\x89PNG", maintype="image", subtype="png", filename="p.png",
                     disposition="inline", cid="<img1@x>")
    parsed = parse(bytes(m))
    assert parsed.text == "plain body\n" and parsed.html == "<b>rich</b>\n"
    assert [(a.filename, a.content_type, a.size, a.inline) for a in parsed.attachments] == [
        ("r.csv", "application/octet-stream", 4, False), ("p.png", "image/png", 4, True)]
    assert parsed.attachments[1].content_id == "img1@x"
    assert parsed.payloads == (b"a,b\n", b"\x89PNG")
    assert ("Subject", "parts") in parsed.headers


@pytest_twisted.ensureDeferred
async def test_a_big_message_is_parsed_in_a_thread():
    seen = []
    import mailhost.web.mime as mime

    original = mime.parse

    def spy(raw):
        seen.append(threading.current_thread() is threading.main_thread())
        return original(raw)

    mime.parse = spy
    try:
        small = bytes(message("small", "x\n"))
        big = bytes(message("big", "y" * 70 + "\n", attachment=("big.bin", b"z" * INLINE_LIMIT)))
        assert (await parse_later(small, reactor)).text == "x\n"
        assert len((await parse_later(big, reactor)).payloads[0]) == INLINE_LIMIT
    finally:
        mime.parse = original
    assert seen == [True, False]


@pytest.mark.mailhost(web=True, users={"alice@example.test": "pw"})
def test_cid_images_point_at_the_messages_attachments(mailhost_sync):
    from tests.web.helpers import request

    m = message("logo", "see logo\n", html='<img src="cid:logo@x"><img src="cid:none@x">')
    m.get_payload()[1].add_related(b"\x89PNG", maintype="image", subtype="png", cid="<logo@x>")
    mailhost_sync.deliver("alice@example.test", bytes(m))
    mid = request(mailhost_sync.web_url + "/api/messages").json()["messages"][0]["id"]
    html = request(mailhost_sync.web_url + f"/api/messages/{mid}/html").body.decode()
    assert f'src="/api/messages/{mid}/attachments/0"' in html
    assert 'src="cid:none@x"' in html  # no such part: left alone (and loads nothing)
