"""Why averaging LoRA factors is not averaging LoRA updates (design.md section 5), in plain numpy.

A site's LoRA update is dW_i = B_i A_i (B: d x r, A: r x k). With weights p_i (sum 1):
- naive (FedAvg of the factors, what every weighted-mean strategy does to an adapter): B̄ Ā;
- exact (the mean of the updates): sum_i p_i B_i A_i.
The naive error is exactly the weighted cross-covariance of the factors,

    sum_i p_i B_i A_i - B̄ Ā = sum_i p_i (B_i - B̄)(A_i - Ā),

so it vanishes when either factor is the same at every site. Exact options:
- FFA-LoRA (Sun et al. 2024): freeze A (shared, from the same seed) and train only B; then
  sum_i p_i B_i A = B̄ A and FedAvg of B is exact. This is the default we recommend for federated
  LoRA: exact, no extra server work, half the upload, and any weighted-mean strategy applies as is.
- aggregate the products and refactor: dW = sum_i p_i B_i A_i (rank <= sum of the sites' ranks),
  then a rank-r truncated SVD gives new (B, A) - optimal in Frobenius norm (Eckart-Young) but
  exact only if r >= rank(dW), and it costs d x k memory per adapted matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _weights(p: Sequence[float], n: int) -> np.ndarray:
    weights = np.asarray(p, dtype=np.float64)
    if weights.shape != (n,) or not np.isclose(weights.sum(), 1.0) or (weights < 0).any():
        raise ValueError(f"need {n} non-negative weights summing to 1, got {list(p)}")
    return weights


def naive_product(bs: Sequence[np.ndarray], as_: Sequence[np.ndarray], p: Sequence[float]) -> np.ndarray:
    """B̄ Ā: the update implied by averaging the factors separately."""
    w = _weights(p, len(bs))
    b_mean = sum(wi * b for wi, b in zip(w, bs, strict=True))
    a_mean = sum(wi * a for wi, a in zip(w, as_, strict=True))
    return np.asarray(b_mean @ a_mean)


def exact_product(bs: Sequence[np.ndarray], as_: Sequence[np.ndarray], p: Sequence[float]) -> np.ndarray:
    """sum_i p_i B_i A_i: the weighted mean of the sites' updates."""
    w = _weights(p, len(bs))
    return np.asarray(sum(wi * (b @ a) for wi, b, a in zip(w, bs, as_, strict=True)))


def naive_error(bs: Sequence[np.ndarray], as_: Sequence[np.ndarray], p: Sequence[float]) -> np.ndarray:
    """sum_i p_i (B_i - B̄)(A_i - Ā): what naive averaging leaves out (closed form)."""
    w = _weights(p, len(bs))
    b_mean = sum(wi * b for wi, b in zip(w, bs, strict=True))
    a_mean = sum(wi * a for wi, a in zip(w, as_, strict=True))
    return np.asarray(sum(wi * (b - b_mean) @ (a - a_mean) for wi, b, a in zip(w, bs, as_, strict=True)))


def refactor(delta: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, A) of rank `rank` with B A the best rank-`rank` approximation of `delta` (truncated SVD)."""
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]
