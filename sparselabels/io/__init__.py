"""Reading and writing sparse-label files and shard sets.

Each module has one job, and each imports only those listed before it: ``sequence`` (LabelSpan, what a read
returns), ``source`` (a file's bytes), ``remote_cache`` and ``remote`` (a file's bytes at a URL), ``verify``
(full verification of an opened file), ``reader`` (LabelFile), ``writer`` (LabelWriter), ``manifest`` (the
manifest's format, reading and writing), ``shards`` (LabelShards), ``remote_store`` (a store at a URL),
``upload`` (writing to a URL), ``open`` (open_labels), ``streams`` (random streams of inputs), ``validate``,
``merge`` and ``stats``.
"""
