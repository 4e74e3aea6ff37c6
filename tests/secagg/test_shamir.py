"""t-of-n sharing of 32-byte secrets (pycryptodome's Shamir, two halves)."""

from __future__ import annotations

import itertools
import os

import pytest

from fedtune.errors import FedtuneError
from fedtune.secagg.shamir import combine_secret, split_secret


def test_any_t_shares_rebuild_the_secret() -> None:
    # Prepare
    secret = os.urandom(32)
    holders = [3, 8, 11, 20, 21]

    # Execute
    shares = split_secret(secret, 3, holders)

    # Assert: every subset of 3 holders rebuilds it
    assert sorted(shares) == holders
    for subset in itertools.combinations(holders, 3):
        assert combine_secret(dict(shares[h] for h in subset), 3) == secret


def test_fewer_than_t_shares_are_refused_and_do_not_rebuild_the_secret() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, 3, [0, 1, 2, 3])
    two = dict(shares[h] for h in (0, 1))
    with pytest.raises(FedtuneError, match="cannot rebuild"):
        combine_secret(two, 3)
    assert combine_secret(two, 2) != secret  # interpolating too few points gives another value


def test_impossible_sharing_is_refused() -> None:
    with pytest.raises(FedtuneError):
        split_secret(os.urandom(32), 4, [0, 1, 2])
    with pytest.raises(FedtuneError):
        split_secret(os.urandom(16), 2, [0, 1, 2])
