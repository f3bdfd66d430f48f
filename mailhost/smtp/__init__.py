"""ESMTP server for inbound mail (port 25) and authenticated submission (587/465).

Public face: ``mailhost.smtp.factory.SMTPFactory``. The modules, one idea each:
``server`` (the protocol and command handling), ``session`` (per-connection state),
``params`` (MAIL/RCPT argument grammar), ``policy`` (per-recipient decisions, relay
control), ``data`` (bulk DATA/BDAT readers), ``delivery`` (the delivery targets of a
message as one transaction), ``reply``. Trace headers, the hop count and the bare
CR/LF policy are ``mailhost.message``'s.
"""

from mailhost.smtp.factory import SMTPFactory

__all__ = ["SMTPFactory"]
