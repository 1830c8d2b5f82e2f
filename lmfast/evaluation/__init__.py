"""`lmfast eval`: measuring a model (lm-evaluation-harness tasks: `lmfast.evaluation.tasks`)."""
