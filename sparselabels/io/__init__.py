"""Reading and writing sparse-label files and shard sets.

Each module has one job, and each imports only those listed before it: ``sequence`` (LabelSpan, what a read
returns), ``source`` (a file's bytes), ``verify`` (full verification of an opened file), ``reader``
(LabelFile), ``writer`` (LabelWriter), ``manifest`` (the manifest's format, reading and writing),
``shards`` (LabelShards), ``open`` (open_labels), ``validate``, ``merge`` and ``stats``.
"""
