"""Answer checking shared by the benchmarks and the RL rewards: pure text functions, no model, no data."""
