"""Language-model data selectors: each module registers one or more with dd.registry (kind "lm")."""
