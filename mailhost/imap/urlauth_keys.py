"""URLAUTH mailbox access keys: moved to ``mailhost.urlfetch.keys`` (SMTP's BURL checks
tokens too); re-exported for IMAP's modules and tests."""

from mailhost.urlfetch.keys import KEY_BYTES, UrlAuthKeys, keys_in

__all__ = ["KEY_BYTES", "UrlAuthKeys", "keys_in"]
