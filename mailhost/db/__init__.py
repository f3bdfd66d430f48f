"""PostgreSQL underneath mailhost's stores: the driver seam (``database``), the schema
and its migrations (``migrations``) and cross-node change notification (``notify``)."""
