# Embedding mailhost in an existing Twisted application, next to a twisted.web site.
#
# This file ships inside the package (docs/embedding.md); run it where it is installed:
#
#   twistd -n -y "$(python -c 'import importlib.resources as r; print(r.files("mailhost") / "embedded.tac")')"
#
# or copy it next to your application and edit it. The web app and the mail host share
# one process and one reactor; the web app reads the same store mailhost delivers into
# (here: a page listing the postmaster INBOX). Mail for other domains is refused
# (outbound.enabled=false: no queue, no DNS resolver); drop that line to relay.
# Ports come from the environment so the example can run beside a dev server:
#   MAILHOST_WEB_PORT (8080), MAILHOST_SMTP_PORT (2525), MAILHOST_IMAP_PORT (2143),
#   MAILHOST_DATA (./mailhost-data-embedded)
import os

from twisted.application import service, strports
from twisted.web import resource, server

import mailhost

env = os.environ.get
config = mailhost.load(None, [
    'server.domains=["example.test"]',
    f'server.data_dir="{env("MAILHOST_DATA", "./mailhost-data-embedded")}"',
    'server.allow_plaintext_auth="loopback"',
    f'smtp.listen=["tcp:{env("MAILHOST_SMTP_PORT", "2525")}:interface=127.0.0.1"]',
    'submission.listen=[]',
    'pop3.listen=[]',
    f'imap.listen=["tcp:{env("MAILHOST_IMAP_PORT", "2143")}:interface=127.0.0.1"]',
    'outbound.enabled=false',
])

application = service.Application("web app with mail")
mail = mailhost.makeService(config)
mail.setServiceParent(application)


class Inbox(resource.Resource):
    """The existing app's own page, reading what mailhost stored."""

    isLeaf = True

    def render_GET(self, request):
        def listed(folder):
            lines = [f"{info.uid} {info.size}" for info in folder.messages()]
            request.write(("\n".join(lines) + "\n").encode())
            request.finish()

        d = mail.store.open_account("postmaster@example.test")
        d.addCallback(lambda account: account.open_folder("INBOX"))
        d.addCallback(listed)
        d.addErrback(lambda f: (request.setResponseCode(500), request.finish()))
        return server.NOT_DONE_YET


web = strports.service(f"tcp:{env('MAILHOST_WEB_PORT', '8080')}:interface=127.0.0.1",
                       server.Site(Inbox()))
web.setServiceParent(application)
