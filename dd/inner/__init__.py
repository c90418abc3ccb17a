"""Differentiable inner loops: meta-gradients through unrolled SGD."""

from dd.inner.engines import ENGINES, MetaGrad, meta_gradient

__all__ = ["ENGINES", "MetaGrad", "meta_gradient"]
