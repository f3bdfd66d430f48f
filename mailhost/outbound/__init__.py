"""The outbound queue: durable spool, MX routing, relay client, retries and DSN bounces.

Public face: ``mailhost.outbound.service.OutboundService`` (its ``.queue`` provides
``mailhost.outbound.interfaces.IOutboundQueue``). Everything else is internal.
"""
