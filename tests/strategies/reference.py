"""Numpy references for the server optimisers (state narrowed to float32 between rounds, like the files)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Arrays = dict[str, np.ndarray]
Step = Callable[[np.ndarray, np.ndarray, dict[str, np.ndarray]], np.ndarray]


def fedavgm_step(opts: dict[str, float]) -> Step:
    lr, momentum = opts.get("server_lr", 1.0), opts.get("momentum", 0.9)

    def step(mean: np.ndarray, x: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        buf = momentum * state.get("momentum", 0.0) + (x - mean)
        state["momentum"] = buf
        return x - lr * buf

    return step


def adaptive_step(rule: str, opts: dict[str, float]) -> Step:
    eta, b1, b2, tau = (
        opts.get("eta", 1e-2),
        opts.get("beta1", 0.9),
        opts.get("beta2", 0.99),
        opts.get("tau", 1e-3),
    )

    def step(mean: np.ndarray, x: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        delta = mean - x
        m = b1 * state.get("m", 0.0) + (1 - b1) * delta
        v = state.get("v", np.full_like(x, tau**2))
        if rule == "adagrad":
            v = v + delta**2
        elif rule == "adam":
            v = b2 * v + (1 - b2) * delta**2
        else:
            v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
        state["m"], state["v"] = m, v
        return x + eta * m / (np.sqrt(v) + tau)

    return step


# name -> (options that differ from the defaults, the reference step built from them)
SERVER_OPTIMISERS: dict[str, tuple[dict[str, float], Callable[[dict[str, float]], Step]]] = {
    "fedavgm": ({"server_lr": 0.7, "momentum": 0.5}, fedavgm_step),
    "fedadagrad": ({"eta": 0.05, "beta1": 0.8, "tau": 1e-2}, lambda o: adaptive_step("adagrad", o)),
    "fedadam": ({"eta": 0.05, "beta1": 0.8, "beta2": 0.9, "tau": 1e-2}, lambda o: adaptive_step("adam", o)),
    "fedyogi": ({"eta": 0.05, "beta1": 0.8, "beta2": 0.9, "tau": 1e-2}, lambda o: adaptive_step("yogi", o)),
}


def server_optimiser_rounds(
    name: str, start: Arrays, round_means: Sequence[Arrays]
) -> tuple[Arrays, dict[str, dict[str, np.ndarray]]]:
    """The global tensors and per-tensor server state after one server step per round's weighted mean."""
    options, make_step = SERVER_OPTIMISERS[name]
    step = make_step(options)
    x = {key: value.astype(np.float64) for key, value in start.items()}
    state: dict[str, dict[str, np.ndarray]] = {key: {} for key in x}
    for mean in round_means:
        for key in x:
            stepped = step(mean[key].astype(np.float64), x[key], state[key])
            x[key] = stepped.astype(np.float32).astype(np.float64)
            for buffer in state[key]:
                state[key][buffer] = state[key][buffer].astype(np.float32).astype(np.float64)
    return x, state
