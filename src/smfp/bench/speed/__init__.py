"""Speed benchmarks: update throughput (``smfp bench train``), action latency (``bench latency``), memory soak."""
