"""Per-class feature statistics carried in a classifier layer's tensors (FedNCM, docs/decisions.md 19).

For one round of the ``fedncm`` strategy a site does not train: it runs its train split through the
global model and puts, into the tensors of the classifier's final linear layer,

- ``<head>.weight`` (classes x features): the sum of that layer's input features over the site's
  examples of each class;
- ``<head>.bias`` (classes,): the number of the site's examples of each class.

The layout of the update is the version's, so the upload, the spool and the resume paths are the
usual ones; the coordinator sums the statistics of all sites and turns them into a nearest-class-mean
head. Shared by the worker (which fills the tensors) and the coordinator (which reads them).
"""

from __future__ import annotations

from collections.abc import Iterable

from fedtune.errors import ErrorCode, FedtuneError


def _matches(name: str, head: str, leaf: str) -> bool:
    suffix = f"{head}.{leaf}"
    return name == suffix or name.endswith("." + suffix)


def head_tensor_names(names: Iterable[str], head: str) -> tuple[str, str]:
    """(weight name, bias name) of the classifier layer `head` among a version's tensor names.

    `head` is the layer's module path in the base model (``classifier`` for BERT-like models,
    ``classifier.out_proj`` for RoBERTa-like ones); the names are peft save names, which prefix it.
    """
    listed = list(names)
    weights = [n for n in listed if _matches(n, head, "weight")]
    biases = [n for n in listed if _matches(n, head, "bias")]
    if len(weights) != 1 or len(biases) != 1:
        shown = ", ".join(n for n in listed if "lora_" not in n)[:300] or "(none besides LoRA tensors)"
        raise FedtuneError(
            ErrorCode.INVALID_SPEC,
            f"class statistics need exactly one trainable '{head}.weight' and one '{head}.bias' tensor "
            f"(found {len(weights)} and {len(biases)}); set strategy.options.head to the classifier's "
            f"final linear layer (e.g. classifier, classifier.out_proj); non-LoRA tensors: {shown}",
        )
    return weights[0], biases[0]
