"""IMAP session states (RFC 3501 section 3) and the state sets commands allow."""

NOT_AUTHENTICATED = "not-authenticated"
AUTHENTICATED = "authenticated"
SELECTED = "selected"
LOGOUT = "logout"

ANY = frozenset({NOT_AUTHENTICATED, AUTHENTICATED, SELECTED})
NOAUTH = frozenset({NOT_AUTHENTICATED})
AUTH = frozenset({AUTHENTICATED, SELECTED})
SEL = frozenset({SELECTED})
