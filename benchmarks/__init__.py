"""Speed and memory measurements; each script records its own section of BENCHMARKS.md."""
