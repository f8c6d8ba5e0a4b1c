"""``spark-bench gpu-check``: one prepared command that checks and measures on a GPU what the CPU
cannot (CUDA correctness, host-device synchronisation, throughput and memory, the data path, the
distributed code path), part by part, each in its own process with its own time limit, writing its
results after every part so that a visit cut short still leaves everything finished so far.

``--device cpu --quick`` runs every part's code path on tiny sizes (what CI runs); the CUDA-only
checks then say "skipped: no CUDA"."""
