"""The performance harness behind ``spark-bench step|paired|sync|profile|e2e|norm`` (see docs/benchmarks.md)."""
