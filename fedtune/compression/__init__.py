"""Wire compression of uploaded updates (docs/decisions.md 40): bf16, int8 with block scales, top-k.

``encoding``: what an encoded update holds and its exact tensor layout; ``codec``: the numpy kernels
(quantize, sparsify, encode a whole update on a site); ``decode``: the coordinator's streaming decode of
a spooled encoded update back into the model's layout, O(chunk) memory.
"""
