"""The web UI's frozen settings, made from ``[web]`` by the composition root."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailhost.config import Config


@dataclass(frozen=True)
class WebSettings:
    """What the web UI and REST API read: where to listen, who may use it, and
    whether faults may be scripted from it."""

    listen: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    faults: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.listen)

    @property
    def basic_auth(self) -> bool:
        """Both set: every request needs them; otherwise loopback only."""
        return bool(self.username and self.password)

    @classmethod
    def from_config(cls, config: Config) -> WebSettings:
        w = config.web
        return cls(w.listen, w.username, w.password, w.faults)
