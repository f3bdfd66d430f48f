"""POP3 (RFC 1939, 2449, 2595, 5034) over the mail store's INBOX.

``POP3Factory`` is the listener's factory; factories for several endpoints share
one ``MaildropLocks`` so a maildrop has one POP3 session at a time.
"""

from mailhost.pop3.factory import POP3Factory
from mailhost.pop3.lock import FileMaildropLocks, MaildropLocks

__all__ = ["POP3Factory", "MaildropLocks", "FileMaildropLocks"]
