"""The checkpoint engine: universal sharded format, asynchronous multi-tier save, reshard-on-restore."""
