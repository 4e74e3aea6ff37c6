"""The neighbour graph and the automatic choice of k and t."""

from __future__ import annotations

import pytest

from fedtune.errors import FedtuneError
from fedtune.secagg.graph import choose_graph_params, neighbour_graph


@pytest.mark.parametrize(
    ("sites", "neighbours", "threshold"),
    [(3, 2, 2), (4, 3, 2), (16, 15, 8), (17, 16, 9), (20, 18, 10), (32, 20, 11), (1000, 40, 21)],
)
def test_auto_rule_picks_k_and_t(sites: int, neighbours: int, threshold: int) -> None:
    params = choose_graph_params(sites)
    assert (params.neighbours, params.threshold) == (neighbours, threshold)


@pytest.mark.parametrize("sites", range(3, 41))
def test_auto_rule_tolerates_a_quarter_of_the_sites_dropping(sites: int) -> None:
    params = choose_graph_params(sites)
    assert params.tolerated_dropouts_per_neighbourhood >= sites // 4
    assert params.threshold > params.neighbours / 2


@pytest.mark.parametrize("sites", [5, 17, 32, 100, 257])
def test_graph_is_symmetric_k_regular_and_deterministic(sites: int) -> None:
    # Prepare
    params = choose_graph_params(sites)

    # Execute
    graph = neighbour_graph(params, b"seed-a")

    # Assert
    assert all(len(neighbours) == params.neighbours for neighbours in graph)
    assert all(i not in graph[i] and all(i in graph[j] for j in graph[i]) for i in range(sites))
    assert neighbour_graph(params, b"seed-a") == graph
    if params.neighbours < sites - 1:
        assert neighbour_graph(params, b"seed-b") != graph
        assert sum(len(n) for n in graph) == sites * params.neighbours  # O(n*k) pairs, not O(n^2)


@pytest.mark.parametrize(
    ("sites", "neighbours", "threshold", "message"),
    [
        (2, None, None, "at least 3 sites"),
        (32, 7, None, "must be even"),
        (32, 40, None, "must be even"),
        (32, 20, 10, "at or below half"),
        (32, 20, 21, "at or below half"),
    ],
)
def test_bad_graph_params_are_refused(
    sites: int, neighbours: int | None, threshold: int | None, message: str
) -> None:
    with pytest.raises(FedtuneError, match=message):
        choose_graph_params(sites, neighbours, threshold)
