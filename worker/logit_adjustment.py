"""Logit-adjusted cross-entropy for label-skewed sites (docs/decisions.md 18).

During local training only, a site with label prior p_site minimises CE(logits + tau * log p_site, y)
(Menon et al. 2021, "Long-tail learning via logit adjustment"; FedLC, Zhang et al. 2022; with tau = 1
this is balanced softmax). The site's class prior is then explained by the fixed offset instead of
being learned into the shared weights, so averaging sites with different label mixes no longer pulls
the global classifier towards each site's majority class. Evaluation and inference use raw logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

SMOOTHING = 1.0  # Laplace: +1 per class, so a class absent at a site gets a small prior, not log 0


def site_log_prior(labels: Sequence[int], num_classes: int, smoothing: float = SMOOTHING) -> torch.Tensor:
    """log of the site's smoothed label distribution over all `num_classes` classes, shape (num_classes,)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if smoothing <= 0:
        raise ValueError(f"smoothing must be > 0 (absent classes would get log 0), got {smoothing}")
    ids = torch.as_tensor(list(labels), dtype=torch.long)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {sorted(set(ids.tolist()))}")
    counts = torch.bincount(ids, minlength=num_classes).to(torch.float64) + smoothing
    return (counts / counts.sum()).log().float()


def adjusted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, log_prior: torch.Tensor, tau: float
) -> torch.Tensor:
    """Mean CE of `logits + tau * log_prior` (logits (batch, classes), labels (batch,)), in float32."""
    shifted = logits.float() + tau * log_prior.to(device=logits.device, dtype=torch.float32)
    return F.cross_entropy(shifted, labels.view(-1))
