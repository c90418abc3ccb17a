"""Language-model corpus methods (data selectors): each module registers itself in dd.lm.base.METHODS."""
