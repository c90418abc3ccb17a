"""Image methods; each module registers itself in dd.registry."""
