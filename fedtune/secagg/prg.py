"""The mask stream: a seekable ChaCha20 keystream read as little-endian uint32 elements.

Why ChaCha20 and not numpy's PCG64 / Philox: a mask hides an update only if the stream is
computationally indistinguishable from uniform to whoever sees the masked update. PCG64's state can be
recovered from a few outputs, and neither numpy generator is designed to resist that; ChaCha20 is a
stream cipher built for it, OpenSSL runs it at GB/s, and its 32-bit block counter makes the stream
seekable: the element at index ``j`` lies in block ``j // 16``, so a site can mask any chunk at any
offset (a resumed upload) in O(chunk) memory without generating what comes before.

Every key is used with one fixed nonce: keys are derived per (pair or site, round) by HKDF
(``keys.py``), so a (key, nonce) pair never protects two different streams.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numpy.typing import NDArray

from fedtune.errors import ErrorCode, FedtuneError

KEY_BYTES = 32
ELEMENT_BYTES = 4
BLOCK_BYTES = 64  # one ChaCha20 block
ELEMENTS_PER_BLOCK = BLOCK_BYTES // ELEMENT_BYTES
MAX_STREAM_ELEMENTS = 2**32 * ELEMENTS_PER_BLOCK  # the 32-bit block counter: 256 GiB of uint32 per key
_NONCE = bytes(12)


def mask_stream(key: bytes, offset: int, count: int) -> NDArray[np.uint32]:
    """Elements ``[offset, offset + count)`` of the stream of ``key``: uniform in Z_2^32, deterministic."""
    if len(key) != KEY_BYTES:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"a mask key has {KEY_BYTES} bytes, not {len(key)}")
    if offset < 0 or count < 0 or offset + count > MAX_STREAM_ELEMENTS:
        raise FedtuneError(
            ErrorCode.TOO_LARGE,
            f"mask elements [{offset}, {offset + count}) fall outside the {MAX_STREAM_ELEMENTS} elements one "
            "mask stream covers; send a smaller update",
        )
    if count == 0:
        return np.zeros(0, dtype=np.uint32)
    first_block, skip = divmod(offset, ELEMENTS_PER_BLOCK)
    nbytes = (skip + count) * ELEMENT_BYTES
    # the IV of OpenSSL's ChaCha20: a 32-bit little-endian block counter, then the 96-bit nonce
    encryptor = Cipher(
        algorithms.ChaCha20(key, first_block.to_bytes(4, "little") + _NONCE), mode=None
    ).encryptor()
    out = bytearray(nbytes + BLOCK_BYTES)  # update_into wants room for one more block
    if encryptor.update_into(bytes(nbytes), out) != nbytes:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, "the ChaCha20 keystream came out short")
    stream = np.frombuffer(out, dtype="<u4", count=count, offset=skip * ELEMENT_BYTES)
    return stream.astype(np.uint32, copy=False)
