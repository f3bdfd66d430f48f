# Reference point for the SMTP ingest benchmark: Twisted's stock mail server
# (../shared/bench-peers/twisted_mail.tac, loaded unchanged) with durability added
# and nothing else: the message file is fdatasync'ed and the new/ directory fsync'ed
# in the reactor's thread pool before the 250, the way mailhost's store does it.
#
# It answers "what does durability alone cost Twisted's own SMTP server?", which
# bounds what any durable single-process Twisted server can reach against the
# stock, non-durable one.
#
# Run:  TWMAIL_PORT=2527 TWMAIL_DIR=DIR/twmail MAILHOST_BENCH_PEERS=../shared/bench-peers \
#       twistd -n --pidfile= --logfile=twistd.log -y twisted_mail_durable.tac
import os

from twisted.internet import threads
from twisted.mail import maildir

PEERS = os.environ.get("MAILHOST_BENCH_PEERS", "../shared/bench-peers")  # from the repo root


def _durable_finish(fp, tmp: str, final: str) -> None:
    fp.flush()
    os.fdatasync(fp.fileno())
    fp.close()
    os.rename(tmp, final)
    fd = os.open(os.path.dirname(final), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def eomReceived(self):  # noqa: N802 - replaces MaildirMessage.eomReceived
    # Stock: close, rename tmp -> new, succeed. Here the same, made durable off the
    # reactor thread.
    self.finalName = self.finalName + ",S=%d" % (self.size,)  # as the stock method
    return threads.deferToThread(_durable_finish, self.fp, self.name,
                                 os.fsdecode(self.finalName)).addCallback(
                                     lambda _: self.finalName)


maildir.MaildirMessage.eomReceived = eomReceived

with open(os.path.join(PEERS, "twisted_mail.tac")) as f:
    exec(compile(f.read(), os.path.join(PEERS, "twisted_mail.tac"), "exec"))
