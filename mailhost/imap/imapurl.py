"""IMAP URLs (RFC 5092): moved to ``mailhost.urlfetch.imapurl`` so that SMTP's BURL can
read them too (protocols don't import each other); re-exported for IMAP's modules."""

from mailhost.urlfetch.imapurl import BadUrl, ImapUrl, parse, resolve, store_name

__all__ = ["BadUrl", "ImapUrl", "parse", "resolve", "store_name"]
