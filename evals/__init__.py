"""Golden sets, metrics (pure functions) and the runner behind `xiaoyu eval`."""
