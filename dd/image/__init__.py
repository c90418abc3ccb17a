"""The image home: pipeline (dd-distill, dd-eval), evaluator, experts, batched trainer, methods."""
