"""The Maildir store's internals: private to ``mailhost.store``.

``mailhost.store.maildir.MaildirStore`` is the Maildir store's one public face; it
serves the store contract (``mailhost.store.interfaces``) and is all that protocols,
the service and embedders see. Everything in this package is how it does so, and may
change with it:

- files and directories: ``maildir_io`` (delivery, links, renames, the multi-folder
  commit journal), ``maildir_names`` (file names and info letters), ``maildir_watch``
  (inotify or polling);
- the folder and its index: ``maildir_folder`` (``MaildirFolder``), ``maildir_index``
  (loading, rescans), ``maildir_cache`` (parsed-structure cache), ``maildir_account``
  (folders of one user), ``maildir_writer`` (SMTP deliveries and APPEND);
- UIDs shared with Dovecot: ``maildir_uids`` (``FolderUids``), ``dovecot_uidlist``,
  ``dovecot_keywords``, ``dotlock``, ``uidcache``, ``legacy_uidlist``.

The internal API between these modules is the named methods of ``MaildirStore``
(``account``, ``tmp_dir``, ``syncer``, ``run_blocking``), ``MaildirAccount``
(``folder``, ``loaded_folder``, ``folder_path``, ``number_unopened``) and
``MaildirFolder`` (``path``, ``learn_keywords``, ``letters``, ``delivery_uids``,
``expect_files``, ``unexpect_files``, ``settle_uids``, ``number_later``,
``delivered_row`` beside it). Nothing outside ``mailhost/store/`` imports from here
(``tests/message/test_layering.py``).
"""
