"""Reading and writing sparse-label files and shard sets."""
