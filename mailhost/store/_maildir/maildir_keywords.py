"""FolderKeywords: which letter of a folder's file names means which IMAP keyword.

Dovecot keeps a Maildir's keywords in ``dovecot-keywords`` (dovecot_keywords.
KeywordFile, read and written in threads): a keyword's letter ``a``-``z`` in a file
name's info part means the keyword at that index. The folder's index holds the map it
follows (``FolderIndex.keywords``); this class keeps it current: it gives new keywords
a letter before a file name uses one (``learn``), and follows the map a worker thread
read or wrote (``apply``), telling listeners of messages whose flags changed with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer

from mailhost.store._maildir.dovecot_keywords import KeywordFile, KeywordMap
from mailhost.store._maildir.maildir_index import FolderIndex
from mailhost.store.interfaces import MessageInfo


class FolderKeywords:
    """The keyword letters of one MaildirFolder (see the module docstring).

    Built with: ``file`` (the folder's KeywordFile), ``run_blocking`` (the store's
    thread helper), ``index`` (the folder's current index, whose ``keywords`` map is
    the one followed), ``changed`` (tell listeners of changed messages) and ``gone``
    (whether the folder was deleted: nobody is told)."""

    def __init__(self, file: KeywordFile, run_blocking: Callable[..., defer.Deferred[Any]],
                 index: Callable[[], FolderIndex],
                 changed: Callable[[list[MessageInfo]], None],
                 gone: Callable[[], bool]) -> None:
        self.file = file
        self._run_blocking = run_blocking
        self._index = index
        self._changed = changed
        self._gone = gone
        self.generation = 0  # of the KeywordFile map the index follows

    def letters(self, flags: frozenset[str], extra: str = "") -> str:
        """Maildir letters for flags; their keywords must have letters already
        (``learn``)."""
        return self._index().keywords.letters_of(flags, extra)

    async def learn(self, flags: Iterable[str]) -> None:
        """Make sure every keyword among ``flags`` has a letter in dovecot-keywords
        before a file name uses it. A keyword we know costs nothing (as in Dovecot, a
        letter once in the file keeps its keyword); for a new one a worker thread
        re-reads the file if it changed and gives out letters under the uidlist lock,
        never one the file or a file name already uses (see dovecot_keywords)."""
        names = [f for f in flags if not f.startswith("\\")]
        keywords = self._index().keywords
        if all(keywords.index_of(n) is not None for n in names):
            return
        got = await self._run_blocking(self.file.learn, names,
                                       self._index().unmapped_letters())
        self.apply(got)

    def apply(self, got: KeywordMap | None) -> None:
        """Follow the map a worker thread read or wrote (older results are dropped):
        states get the flags their letters mean now, and listeners hear of messages
        whose flags changed with it (letters Dovecot gave out that we now know)."""
        if got is None or got[0] <= self.generation:
            return
        self.generation, by_index = got
        index = self._index()
        keywords = index.keywords
        if by_index == keywords.by_index:
            return
        keywords.replace(by_index)
        moved = index.remap_keywords()
        if moved and not self._gone():
            self._changed([index.info_at(i) for i, sid in enumerate(index.states)
                           if sid in moved])
