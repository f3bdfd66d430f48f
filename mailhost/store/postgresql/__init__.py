"""The PostgreSQL store: the store contract on a database several nodes share.

``store`` holds the live objects (store, accounts, folders and their in-memory
index), ``sql`` the transactions they run in database threads, ``bodies`` the
message writer and the chunked body reader.
"""

from mailhost.store.postgresql.store import PostgresStore

__all__ = ["PostgresStore"]
