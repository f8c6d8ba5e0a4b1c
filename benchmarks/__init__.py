"""``spark-bench``: measurements, not tests. ``value`` asks what SparK pre-training buys downstream on real
data (:mod:`.value`); ``perf`` times and profiles a SparK training step against the dense floor and a naive
masked reference, checks host-device synchronisation and times the data path (:mod:`.perf`)."""
