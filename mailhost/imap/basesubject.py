"""Base subject extraction (RFC 5256 section 2.1) for SORT SUBJECT and THREAD.

``base_subject`` follows the RFC's steps literally: RFC 2047-decoded text with runs of
white space collapsed to one space, then (2) trailing ``(fwd)`` and white space
removed, (3)-(5) leading ``Re:``/``Fw:``/``Fwd:`` leaders (with optional ``[blob]``s)
and ``[blob]``s that do not leave the subject empty removed until none is left, and (6)
a ``[fwd: ...]`` wrapper removed, starting over from (2). It also says whether the
subject was a reply or forward (step 2, 3 or 6 removed something), which the
REFERENCES algorithm uses. Comparison is the caller's: ``casemap`` of the result.
"""

from __future__ import annotations

import re

_WSP_RUN = re.compile(r"[ \t\r\n]+")
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])+\Z", re.IGNORECASE)
_BLOB = r"\[[^\[\]]*\][ \t]*"
# subj-leader = (*subj-blob subj-refwd) / WSP ; subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
_LEADER = re.compile(rf"(?:{_BLOB})*(?:re|fwd?)[ \t]*(?:{_BLOB})?:|[ \t]", re.IGNORECASE)
_BLOB_RE = re.compile(_BLOB)
#: Bounds the loops against a crafted subject (each pass removes at least one char).
MAX_PASSES = 10_000
#: The characters a leader (or a blob) can start with, and a trailer end with: a
#: subject that starts and ends otherwise needs no regex (issue 16: SORT (SUBJECT) on
#: 100k messages spent most of its time here). Each is checked before its regex.
_LEADER_START = frozenset("[rRfF \t")
_TRAILER_END = frozenset(") \t")


def base_subject(subject: str) -> tuple[str, bool]:
    """(base subject, whether it was a reply/forward) of a decoded subject."""
    s = subject
    if "  " in s or "\t" in s or "\r" in s or "\n" in s:  # else the same string
        s = _WSP_RUN.sub(" ", s)
    reply = False
    for _ in range(MAX_PASSES):
        # (2) subj-trailer
        m = _TRAILER.search(s) if s[-1:] in _TRAILER_END else None
        if m is not None:
            if "(" in m.group(0):
                reply = True
            s = s[:m.start()]
        # (3)-(5)
        for _ in range(MAX_PASSES):
            changed = False
            while s[:1] in _LEADER_START:
                m = _LEADER.match(s)
                if m is None or not m.group(0):
                    break
                if m.group(0).strip():
                    reply = True
                s = s[m.end():]
                changed = True
            m = _BLOB_RE.match(s) if s[:1] == "[" else None
            if m is not None and s[m.end():]:
                s = s[m.end():]
                changed = True
            if not changed:
                break
        # (6) subj-fwd
        if len(s) >= 6 and s[:5].lower() == "[fwd:" and s.endswith("]"):
            s = s[5:-1]
            reply = True
            continue
        break
    return s, reply
