"""The message on its way: what every part that reads, writes or moves mail shares.

One idea per module: ``headers`` (the ``Received:`` and ``Return-Path:`` trace fields
we add), ``hops`` (counting ``Received:`` for loop detection), ``crlf`` (line-end
normalisation, the one implementation), ``newlines`` (SMTP's bare CR/LF policy for
DATA and BDAT), ``dotstuffing`` (SMTP DATA and POP3 transfers) and ``target``
(``IDeliveryTarget``, the transaction a message is delivered through).

It imports nothing else of mailhost, so store, outbound and the protocols may all use
it.
"""
