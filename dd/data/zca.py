"""ZCA whitening of image tensors, fitted once on the training set.

Fitting goes through kornia's ``ZCAWhitening`` (the MTT recipe) so the transform
is the published one; applying it is a plain matrix product, so it runs on any
device and dtype and can be exported as three tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ZCA:
    """Whitening ``x -> (flatten(x) - mean) @ matrix`` with its exact inverse.

    ``mean`` is (D,) and ``matrix``/``inverse`` are (D, D) with D = C*H*W.
    ``matrix`` is ``U diag(1/sqrt(S+eps)) U^T`` for the eigen-decomposition
    ``U S U^T`` of the (unbiased) training covariance, as kornia computes it.
    """

    def __init__(self, mean: Tensor, matrix: Tensor, eps: float | None, inverse: Tensor | None = None):
        self.mean = mean.reshape(-1)
        self.matrix = matrix
        self.eps = eps
        if inverse is None:
            # The matrix is symmetric positive definite and well conditioned
            # (eigenvalues within [1/sqrt(Smax+eps), 1/sqrt(eps)]), so a plain inverse is safe.
            inverse = torch.linalg.inv(matrix.double()).to(matrix.dtype)
        self.inverse = inverse

    @classmethod
    def fit(cls, x: Tensor, eps: float = 0.1) -> ZCA:
        """Fit on a batch (N, C, H, W); every non-batch axis is one feature."""
        from kornia.enhance import ZCAWhitening

        # dim=0 and unbiased=True are kornia's defaults; spelled out because apply() relies on them.
        k = ZCAWhitening(dim=0, eps=float(eps), unbiased=True, compute_inv=True).fit(x)
        return cls(k.mean_vector.reshape(-1), k.transform_matrix, float(eps), k.transform_inv)

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def _check(self, x: Tensor) -> None:
        if x[0].numel() != self.dim:
            raise ValueError(f"ZCA was fitted on {self.dim} features per image, got shape {tuple(x.shape)}")

    def apply(self, x: Tensor) -> Tensor:
        """Whiten (N, C, H, W) -> (N, C, H, W); differentiable in ``x``."""
        self._check(x)
        flat = x.reshape(x.shape[0], -1)
        out = (flat - self.mean.to(flat)) @ self.matrix.to(flat)
        return out.reshape(x.shape)

    def invert(self, x: Tensor) -> Tensor:
        """Undo ``apply``: ``flatten(x) @ inverse + mean``."""
        self._check(x)
        flat = x.reshape(x.shape[0], -1)
        out = flat @ self.inverse.to(flat) + self.mean.to(flat)
        return out.reshape(x.shape)

    def state(self) -> dict[str, Tensor]:
        """Tensors needed to rebuild the transform (e.g. for a safetensors export)."""
        return {
            "zca_matrix": self.matrix.detach().cpu().contiguous(),
            "zca_mean": self.mean.detach().cpu().contiguous(),
            "zca_inverse": self.inverse.detach().cpu().contiguous(),
        }

    @classmethod
    def from_state(cls, d: dict[str, Tensor], eps: float | None = None) -> ZCA:
        """Rebuild from ``state()``; ``zca_inverse`` is recomputed when absent."""
        return cls(d["zca_mean"], d["zca_matrix"], eps, d.get("zca_inverse"))
