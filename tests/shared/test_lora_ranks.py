"""fedtune/lora_ranks.py and peft.site_ranks: a site's rank, its alpha, slicing and embedding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.lora_ranks import (
    embed_in_global,
    lora_pairs,
    pad_to_shapes,
    site_alpha,
    site_rank,
    slice_to_rank,
)
from fedtune.spec import load_spec_json, parse_spec

A = "base_model.model.layer.0.query.lora_A.weight"
B = "base_model.model.layer.0.query.lora_B.weight"
E_A = "base_model.model.embed.lora_embedding_A"
E_B = "base_model.model.embed.lora_embedding_B"
HEAD = "base_model.model.classifier.weight"


def global_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    shapes = {A: (4, 6), B: (5, 4), E_A: (4, 9), E_B: (3, 4), HEAD: (2, 5)}
    return {n: rng.standard_normal(s) for n, s in shapes.items()}


def test_pairs_ranks_and_alpha() -> None:
    assert lora_pairs([B, A, HEAD, E_A, E_B]) == [(A, B), (E_A, E_B)]
    assert site_rank(8, {"a": 2}, "a", None) == 2
    assert site_rank(8, {"a": 2}, "b", None) == 8 and site_rank(8, {"a": 2}, "b", 3) == 3
    assert site_rank(8, None, "b", 16) == 8
    assert site_alpha(16.0, 4, 8, rslora=False) / 4 == 16.0 / 8  # alpha / r kept
    assert site_alpha(16.0, 2, 8, rslora=True) / math.sqrt(2) == pytest.approx(16.0 / math.sqrt(8))


def test_slice_then_embed_gives_back_the_global_and_keeps_untrained_components() -> None:
    whole = global_arrays()
    small = slice_to_rank(whole, 2)
    assert small[A].shape == (2, 6) and small[B].shape == (5, 2) and small[E_B].shape == (3, 2)
    assert small[HEAD] is whole[HEAD]
    for name, array in embed_in_global(small, whole).items():
        np.testing.assert_array_equal(array, whole[name])

    trained = {**small, A: small[A] + 1.0, B: small[B] - 1.0}
    sent = embed_in_global(trained, whole)

    np.testing.assert_array_equal(sent[A][:2], trained[A])
    np.testing.assert_array_equal(sent[A][2:], whole[A][2:])
    np.testing.assert_array_equal(sent[B][:, 2:], whole[B][:, 2:])
    with pytest.raises(ValueError, match="does not fit"):
        embed_in_global({**trained, A: np.zeros((2, 7))}, whole)


def test_zero_padding_keeps_the_product() -> None:
    small = slice_to_rank(global_arrays(), 3)
    shapes = {n: a.shape for n, a in global_arrays().items()}

    padded = pad_to_shapes(small, shapes)

    np.testing.assert_array_equal(padded[B] @ padded[A], small[B] @ small[A])
    assert not padded[A][3:].any()
    with pytest.raises(ValueError, match="does not pad"):
        pad_to_shapes({**small, HEAD: np.zeros((1, 5))}, shapes)


def ranked_spec(
    peft: dict[str, object], strategy: str = "hetero_lora", kind: str = "finetune"
) -> dict[str, object]:
    return {
        "name": "x",
        "base_model": {"name": "m"},
        "task": "causal-lm",
        "peft": {"method": "lora", "r": 8, **peft},
        "stages": [{"kind": kind, "strategy": {"name": strategy}}],
    }


@pytest.mark.parametrize(
    ("site_ranks", "message"),
    [
        ({"a": 9}, "site_ranks.a: rank 9 must be a whole number in 1..8"),
        ({"a": 0}, "site_ranks.a: rank 0 must be a whole number in 1..8"),
        ({"a": True}, "peft.lora.site_ranks.a: Input should be a valid integer"),
        ({"a": 2.5}, "peft.lora.site_ranks.a: Input should be a valid integer"),
        ({"": 2}, "site_ranks: site name '' must have"),
    ],
)
def test_site_ranks_outside_1_to_r_are_invalid_spec_naming_the_site(site_ranks: object, message: str) -> None:
    with pytest.raises(FedtuneError) as caught:
        parse_spec(ranked_spec({"site_ranks": site_ranks}))
    assert caught.value.code == ErrorCode.INVALID_SPEC
    assert message in caught.value.message


def test_site_ranks_need_a_rank_aware_strategy_or_ffa_lora() -> None:
    with pytest.raises(FedtuneError) as caught:
        parse_spec(ranked_spec({"site_ranks": {"a": 2}}, strategy="fedavg"))
    assert "stages.0.strategy.name: peft.site_ranks gives sites different LoRA ranks" in caught.value.message
    assert "use strategy hetero_lora or peft.freeze_a: true" in caught.value.message

    ffa = parse_spec(ranked_spec({"site_ranks": {"a": 2}, "freeze_a": True}, strategy="fedavg"))
    assert ffa.peft.site_ranks == {"a": 2}  # type: ignore[union-attr]
    spec = parse_spec(ranked_spec({"site_ranks": {"a": 2}}))
    assert load_spec_json(spec.to_json()) == spec  # stored and reloaded as submitted
