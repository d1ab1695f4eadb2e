"""Data: interleaved documents, tasks, packing, stateful loaders, shards."""
