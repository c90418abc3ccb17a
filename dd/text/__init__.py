"""The text home: pipeline, evaluator, learner loss, methods (attention labels and baselines)."""
