"""Per-variant Bayesian linear regression with exponential forgetting.

For variant v the model is `quality ≈ xᵀθ_v + noise`. The prior is θ_v ~ N(m_v, (σ²/λ) I),
where m_v puts the configured prior quality on the bias coordinate. The data part of the
posterior is kept as (D_v = Σ γ^age x xᵀ, t_v = Σ γ^age r x): forgetting multiplies both by
γ = 1 - decay on every update of v, so old evidence fades while the prior stays put, and a
variant falls back towards its prior in regions it no longer sees.

Posterior: A_v = λI + D_v, mean θ_v = A_v⁻¹(λ m_v + t_v), covariance σ² A_v⁻¹. The mean and
A⁻¹ are cached and refreshed after each update, so prediction is two small mat-vec products.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


class LinearBank:
    """One Bayesian linear model per variant, all over the same feature vector."""

    def __init__(self, prior_quality: Array, size: int, prior_strength: float, noise: float) -> None:
        if prior_strength <= 0.0:
            raise ValueError(f"prior_strength must be > 0, got {prior_strength}")
        n = prior_quality.shape[0]
        self.size = size
        self.lam = float(prior_strength)
        self.noise = float(noise)
        self.prior_mean = np.zeros((n, size))
        self.prior_mean[:, 0] = prior_quality  # coordinate 0 is the bias
        self.data_precision = np.zeros((n, size, size))
        self.data_target = np.zeros((n, size))
        self.weight = np.zeros(n)  # effective (decayed) number of observations per variant
        self.mean = np.empty((n, size))
        self.inv = np.empty((n, size, size))
        self._eye = np.eye(size)
        for v in range(n):
            self.refresh(v)

    def refresh(self, v: int) -> None:
        """Recompute variant v's posterior mean and A⁻¹ from its sufficient statistics."""
        a = self.lam * self._eye + self.data_precision[v]
        inv = np.linalg.inv(a)
        # A is symmetric; averaging with the transpose removes round-off asymmetry
        self.inv[v] = 0.5 * (inv + inv.T)
        self.mean[v] = self.inv[v] @ (self.lam * self.prior_mean[v] + self.data_target[v])

    def forget(self, v: int, keep: float) -> None:
        """Scale variant v's evidence by `keep` (in [0, 1]): a one-off, sharper forgetting."""
        self.data_precision[v] *= keep
        self.data_target[v] *= keep
        self.weight[v] *= keep
        self.refresh(v)

    def update(self, v: int, x: Array, target: float, gamma: float) -> float:
        """Fold one observation (x, target) into variant v after forgetting by factor gamma.

        Returns the residual `target - prediction` of the model as it was before this observation.
        """
        residual = target - float(self.mean[v] @ x)
        d = self.data_precision[v]
        d *= gamma
        d += np.outer(x, x)
        t = self.data_target[v]
        t *= gamma
        t += target * x
        self.weight[v] = gamma * self.weight[v] + 1.0
        self.refresh(v)
        return residual

    def predict_mean(self, x: Array, out: Array) -> Array:
        """Posterior mean quality of every variant at x, written into `out`."""
        return np.matmul(self.mean, x, out=out)

    def predict_std(self, x: Array) -> Array:
        """Posterior standard deviation of xᵀθ for every variant at x."""
        var = np.einsum("vij,i,j->v", self.inv, x, x)
        return np.asarray(self.noise * np.sqrt(np.maximum(var, 0.0)), dtype=np.float64)
