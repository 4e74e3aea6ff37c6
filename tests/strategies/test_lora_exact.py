"""LoRA aggregation math: naive factor averaging vs the true mean of B·A (design.md section 5)."""

from __future__ import annotations

import numpy as np

from coordinator.strategies.lora_math import exact_product, naive_error, naive_product, refactor

D, K, R, SITES = 12, 9, 3, 4


def site_factors(
    rng: np.random.Generator, shared_a: bool = False
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    a0 = rng.standard_normal((R, K))
    bs = [rng.standard_normal((D, R)) for _ in range(SITES)]
    as_ = [a0 if shared_a else rng.standard_normal((R, K)) for _ in range(SITES)]
    p = rng.random(SITES)
    return bs, as_, p / p.sum()


def test_naive_error_equals_the_weighted_cross_covariance_of_the_factors() -> None:
    bs, as_, p = site_factors(np.random.default_rng(40))

    error = exact_product(bs, as_, p) - naive_product(bs, as_, p)

    np.testing.assert_allclose(error, naive_error(bs, as_, p), rtol=1e-10, atol=1e-12)
    assert np.linalg.norm(error) > 0.1 * np.linalg.norm(exact_product(bs, as_, p))  # and it is not small


def test_ffa_lora_with_frozen_shared_a_makes_fedavg_of_b_exact() -> None:
    bs, as_, p = site_factors(np.random.default_rng(41), shared_a=True)

    error = exact_product(bs, as_, p) - naive_product(bs, as_, p)

    assert np.abs(error).max() < 1e-12
    assert np.abs(naive_error(bs, as_, p)).max() < 1e-12


def test_refactoring_the_mean_product_is_exact_at_the_summed_rank() -> None:
    bs, as_, p = site_factors(np.random.default_rng(42))
    delta = exact_product(bs, as_, p)

    b, a = refactor(delta, SITES * R if SITES * R <= min(D, K) else min(D, K))

    np.testing.assert_allclose(b @ a, delta, rtol=1e-9, atol=1e-9)


def test_refactoring_at_the_site_rank_is_the_best_rank_r_approximation() -> None:
    bs, as_, p = site_factors(np.random.default_rng(43))
    delta = exact_product(bs, as_, p)

    b, a = refactor(delta, R)

    singular = np.linalg.svd(delta, compute_uv=False)
    assert b.shape == (D, R) and a.shape == (R, K)
    np.testing.assert_allclose(np.linalg.norm(delta - b @ a), np.sqrt((singular[R:] ** 2).sum()), rtol=1e-9)
