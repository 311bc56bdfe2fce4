"""Overwriting plaintext buffers in place, so that a secret does not outlive its use.

Only what keyd holds in a `bytearray` can be wiped this way: copies the interpreter or a
library made on the way, such as a received frame or an immutable `bytes`, are out of
reach.
"""

from __future__ import annotations


def zero(value: bytearray) -> None:
    """Overwrite a plaintext buffer in place."""
    value[:] = bytes(len(value))
