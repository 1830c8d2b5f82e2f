"""`lmfast eval`: how good a model is: perplexity and bits per byte on held-out text, or
lm-evaluation-harness tasks against an lmfast server (`lmfast.evaluation.tasks`)."""
