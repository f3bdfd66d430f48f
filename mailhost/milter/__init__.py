"""The milter client: the Sendmail milter protocol, version 6, as Postfix speaks it.

``protocol`` holds the packets and their codec and the Twisted protocol,
``headers`` the header block as a milter sees and edits it, ``client`` one
conversation per message. The pipeline stage that runs the configured milters is
``mailhost.pipeline.milter``.
"""
