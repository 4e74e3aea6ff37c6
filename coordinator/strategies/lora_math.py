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


# --- heterogeneous ranks (docs/decisions.md 37) -----------------------------------------------------
# Sites train different ranks r_i <= r and send their factors zero-padded to rank r. The exact global
# update is sum_i p_i B_i A_i (rank <= sum r_i); the next round needs rank r, so it is re-factorised as
# B_j = u_j s_j / n_j, A_j = n_j v_j^T per component j with n_j = max(sqrt(s_j), A_ROW_NORM): balanced
# factors where the component is large, and where it is small or zero (or past the mean's rank) an A row
# of a fresh LoRA's norm with B = 0, so no component is stuck at B = 0 and A = 0 (a saddle that gradient
# descent cannot leave) and no B column is far larger than its A row. Two routes to the same (B, A):
# - FlexLoRA (Bai et al. 2024): form the dense mean dW (d x k), truncated SVD;
# - FLoRA's stacking (Wang et al. 2024): B_s = [p_1 B_1 ... p_n B_n], A_s = [A_1; ...; A_n] give
#   B_s A_s = sum_i p_i B_i A_i exactly; a thin QR of each and the SVD of the small core give the SVD of
#   the product without ever forming d x k.


def stacked_factors(
    bs: Sequence[np.ndarray], as_: Sequence[np.ndarray], p: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """(B_s, A_s) with B_s A_s = sum_i p_i B_i A_i exactly; zero-padded components are dropped."""
    w = _weights(p, len(bs))
    b_cols, a_rows = [], []
    for wi, b, a in zip(w, bs, as_, strict=True):
        live = np.flatnonzero(np.any(b != 0, axis=0) & np.any(a != 0, axis=1))
        b_cols.append(wi * np.asarray(b, dtype=np.float64)[:, live])
        a_rows.append(np.asarray(a, dtype=np.float64)[live])
    return np.hstack(b_cols), np.vstack(a_rows)


# The row norm of a fresh A (peft's kaiming_uniform(a=sqrt(5)): U(-1/sqrt(k), 1/sqrt(k)), norm ~ 1/sqrt(3)).
A_ROW_NORM = 1 / np.sqrt(3.0)


def _split(
    u: np.ndarray, s: np.ndarray, v_rows: np.ndarray, rank: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(B, A) of rank `rank` from the leading singular triplets (u: d x m, s: m, v_rows: m x k)."""
    keep = min(rank, s.size)
    norms = np.maximum(np.sqrt(s[:keep]), A_ROW_NORM)
    b = np.zeros((u.shape[0], rank))
    b[:, :keep] = u[:, :keep] * (s[:keep] / norms)
    a = _complete_rows(v_rows[:keep], rank, seed)
    a[:keep] *= norms[:, None]
    a[keep:] *= A_ROW_NORM
    return b, a


def _complete_rows(rows: np.ndarray, rank: int, seed: int) -> np.ndarray:
    """`rows` (m x k, orthonormal) extended to `rank` orthonormal rows (zero rows past k), seeded."""
    m, k = rows.shape
    if m >= rank:
        return rows[:rank]
    extra = min(rank, k) - m
    out = np.zeros((rank, k))
    out[:m] = rows
    if extra > 0:
        draw = np.random.default_rng(seed).standard_normal((k, extra))
        draw -= rows.T @ (rows @ draw)
        q, _ = np.linalg.qr(draw)
        q -= rows.T @ (rows @ q)  # once more, for rounding
        q, _ = np.linalg.qr(q)
        out[m : m + extra] = q.T
    return out


def refactor_product(
    delta: np.ndarray, rank: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FlexLoRA: (B, A, s) with B A the best rank-`rank` approximation of `delta` (truncated SVD, split
    per component as described above; A's rows orthogonal), s all singular values of `delta`."""
    u, s, vt = np.linalg.svd(np.asarray(delta, dtype=np.float64), full_matrices=False)
    b, a = _split(u, s, vt, rank, seed)
    return b, a, s


def refactor_stacked(
    b_stack: np.ndarray, a_stack: np.ndarray, rank: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same as refactor_product(b_stack @ a_stack, rank) from the factors: memory O((d + k) m)."""
    d, k = b_stack.shape[0], a_stack.shape[1]
    if b_stack.shape[1] == 0:  # every site sent zeros
        b, a = _split(np.zeros((d, 0)), np.zeros(0), np.zeros((0, k)), rank, seed)
        return b, a, np.zeros(0)
    qb, rb = np.linalg.qr(b_stack)
    qa, ra = np.linalg.qr(a_stack.T)
    u, s, vt = np.linalg.svd(rb @ ra.T, full_matrices=False)
    b, a = _split(qb @ u, s, (qa @ vt.T).T, rank, seed)
    return b, a, s


def truncation_error(s: np.ndarray, rank: int) -> float:
    """||dW - its rank-`rank` truncation||_F / ||dW||_F from dW's singular values (0 for dW = 0)."""
    total = float(np.square(s).sum())
    return float(np.sqrt(np.square(s[rank:]).sum() / total)) if total > 0 else 0.0
