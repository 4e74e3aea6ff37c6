"""Secure aggregation kernel (SecAgg+ family; issue 10, docs/decisions.md 30, docs/privacy.md).

Protocol-independent building blocks, pure numpy + ``cryptography`` (+ pycryptodome's Shamir), no torch,
shared by coordinator and worker. One job per module:

- ``quantize``: clip, scale, stochastically round float updates into Z_2^32 and back.
- ``prg``: the seekable ChaCha20 mask stream (mask any chunk at any offset, O(chunk) memory).
- ``keys``: X25519 key pairs, key agreement and HKDF-derived keys.
- ``graph``: the k-regular neighbour graph and the auto rule for k and the threshold t.
- ``shamir``: t-of-n sharing of a site's 32-byte mask secrets (glue around pycryptodome's Shamir).
- ``share_box``: shares sealed with AES-GCM for their recipient, so the coordinator relays ciphertext.
- ``masking``: a site's masks, masking a chunk, the modular fold of masked chunks.
- ``recovery``: which shares a survivor reveals, and the unmasking of the modular sum.
- ``local_round``: every role of one round in one process: the call order the round protocol follows.
- ``site``: one site's four steps with their state on disk (``SiteRound``), the round's public setup.
- ``wire``: the secure-aggregation messages of worker.proto and their records.

The round protocol runs these through tasks (coordinator/secagg/, worker/secagg.py): docs/privacy.md,
docs/decisions.md 35.
"""
