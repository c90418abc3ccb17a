"""Image methods; each module registers itself in dd.image.base.METHODS."""
