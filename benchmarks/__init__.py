"""lmfast's benchmark suite: one module per stage, each comparing lmfast with a baseline in one run."""
