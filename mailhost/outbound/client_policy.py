"""``ClientPolicy``: the settings of one relay connection, chosen by the scheduler
(connection_plan.py) or the mail view's release, obeyed by the client (client.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ClientPolicy:
    """Per-connection settings chosen by the scheduler (timeouts in seconds)."""

    hostname: str  # our EHLO name
    mx_name: str  # the server's name (for logs, Remote-MTA and TLS verification)
    # The address and port connected to, for error texts ("[192.0.2.1]:25").
    address: str = ""
    port: int = 0
    tls: str = "opportunistic"  # opportunistic / verify / none
    tls_context: object | None = None
    # Checks the server's certificates after the handshake (security.TLSVerifier);
    # when it ``enforce``s, a problem ends the session with 4.7.5 before MAIL.
    tls_verifier: Any = None
    username: str = ""
    password: str = ""
    allow_plain_auth: bool = False
    # RFC 5321 §4.5.3.2: MAIL, RCPT and every other command's reply.
    command_timeout: float = 300.0
    greeting_timeout: float = 300.0
    data_init_timeout: float = 120.0  # the 354 to DATA
    data_block_timeout: float = 180.0  # the transport taking each chunk of the body
    final_timeout: float = 600.0  # the reply after the final dot or BDAT LAST
    reply_max_lines: int = 100
    reply_max_bytes: int = 65536
    max_messages: int = 100
    # How long an idle connection waits for more mail for its domain before QUIT
    # (like Postfix's smtp_connection_cache_time_limit); 0 quits at once.
    idle_timeout: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
