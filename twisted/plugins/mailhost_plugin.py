"""twistd plugin: ``twistd -n mailhost [--config FILE.toml] [options]``.

Thin on purpose: it parses options into a ``Config`` and calls
``mailhost.service.makeService``, the same function embedders use.
"""

from __future__ import annotations

import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    synopsis = "[--config FILE.toml] [--set section.key=value ...]"
    longdesc = (
        "Run the mailhost ESMTP/POP3/IMAP4 mail host. Options override the config "
        "file, which overrides the defaults."
    )
    optParameters = [
        ["config", "c", None, "TOML config file (see tap-configs/)."],
        ["data-dir", "d", None, "Data directory (server.data_dir)."],
        ["hostname", None, None, "This host's name (server.hostname)."],
        ["log-format", None, None, "text or json (server.log_format)."],
        # Set by the supervisor of server.workers > 1 for each worker it spawns.
        ["worker", None, None, "Internal: run as worker N of the supervisor."],
        ["worker-fds", None, None, "Internal: the listening sockets handed down."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["set"] = []
        self["domain"] = []
        self["smtp"] = []
        self["pop3"] = []
        self["imap"] = []

    def opt_set(self, assignment: str) -> None:
        """Override one config key: --set smtp.max_message_size=1048576 (repeatable)."""
        self["set"].append(assignment)

    def opt_domain(self, domain: str) -> None:
        """A local domain (repeatable; replaces server.domains)."""
        self["domain"].append(domain)

    def opt_smtp(self, endpoint: str) -> None:
        """An SMTP listener endpoint, e.g. tcp:2525:interface=127.0.0.1 (repeatable)."""
        self["smtp"].append(endpoint)

    def opt_pop3(self, endpoint: str) -> None:
        """A POP3 listener endpoint (repeatable)."""
        self["pop3"].append(endpoint)

    def opt_imap(self, endpoint: str) -> None:
        """An IMAP listener endpoint (repeatable)."""
        self["imap"].append(endpoint)

    def overrides(self) -> list[str]:
        import json

        out = []
        for opt, key in (("data-dir", "server.data_dir"), ("hostname", "server.hostname"),
                         ("log-format", "server.log_format")):
            if self[opt] is not None:
                out.append(f"{key}={json.dumps(self[opt])}")
        for opt, key in (("domain", "server.domains"), ("smtp", "smtp.listen"),
                         ("pop3", "pop3.listen"), ("imap", "imap.listen")):
            if self[opt]:
                out.append(f"{key}={json.dumps(self[opt])}")
        return out + self["set"]

    def postOptions(self) -> None:
        from mailhost.config import ConfigError, load

        try:
            self.config = load(self["config"], self.overrides())
        except ConfigError as e:
            # One line, no usage dump and no traceback: the admin needs only the key.
            sys.stderr.write(f"mailhost: config error: {e}\n")
            raise SystemExit(2) from None
        if getattr(self, "parent", None) is not None:
            from mailhost.logs import install_log_format

            server = self.config.server
            install_log_format(server.log_format, self.parent,
                               server.log_max_bytes, server.log_max_files)


@implementer(IServiceMaker, IPlugin)
class MailHostServiceMaker:
    tapname = "mailhost"
    description = "mailhost: ESMTP, submission, POP3 and IMAP4 mail host."
    options = Options

    def makeService(self, options: Options):
        from mailhost.config import ConfigError
        from mailhost.service import makeService
        from mailhost.workers import worker_count

        worker = None
        if options["worker"] is not None:
            worker = _worker_context(options)
        elif worker_count(options.config.server.workers) > 1:
            from mailhost.workers.supervisor import Supervisor

            return Supervisor(options.config, worker_count(options.config.server.workers))
        try:
            svc = makeService(options.config, worker=worker)
        except ConfigError as e:
            raise SystemExit(f"mailhost: config error: {e}") from None
        except OSError as e:  # a read-only or unwritable data directory: one line, exit 1
            from mailhost.diskspace import describe

            raise SystemExit(f"mailhost: cannot start: {describe(e)}") from None
        svc.handle_sighup = True
        svc.exit_on_listen_error = True
        # Store fsyncs, argon2 and DNS share the reactor's thread pool; 10 threads
        # (the default) queue fsyncs behind each other under load.
        from twisted.internet import reactor

        reactor.suggestThreadPoolSize(20)
        from mailhost.heap import settle

        reactor.callWhenRunning(settle)  # the collector's settings for a server
        return svc


def _worker_context(options: Options):
    """A worker's number, inherited sockets and channel to the supervisor; the worker
    stops (gracefully) when the supervisor goes away."""
    import json

    from twisted.internet import reactor, stdio

    from mailhost.workers import CHANNEL_IN, CHANNEL_OUT, WorkerContext
    from mailhost.workers.channel import WorkerChannel

    fds = {k: (int(v[0]), int(v[1])) for k, v in json.loads(options["worker-fds"]).items()}

    def lost() -> None:
        if reactor.running:
            reactor.stop()

    channel = WorkerChannel(on_lost=lost)
    stdio.StandardIO(channel, stdin=CHANNEL_IN, stdout=CHANNEL_OUT, reactor=reactor)
    return WorkerContext(int(options["worker"]), fds, channel)


serviceMaker = MailHostServiceMaker()
