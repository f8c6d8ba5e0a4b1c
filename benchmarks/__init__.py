"""Benchmarks that measure what sparkmim buys: ``value`` (pre-training against scratch on real data)."""
