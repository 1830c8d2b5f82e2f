"""`lmfast eval`: how good a model is on held-out text (perplexity and bits per byte)."""
