"""Tools beside the pipeline: tuning studies and held-out scoring (study, heldout), the launcher for many
runs at once (launch), and benchmarks of speed (bench_*). Nothing in the pipeline imports them."""
