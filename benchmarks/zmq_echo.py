"""The keyd baseline: a bare pyzmq ROUTER that answers each request with a reply of the
size keyd's would have, with keyd's framing (identity, empty delimiter, one payload frame)
on an ipc:// socket. It does no decoding and no cryptography: everything keyd costs on
top of this is keyd's own work.

Run as `python -m benchmarks.zmq_echo ENDPOINT REPLY_BYTES`.
"""

from __future__ import annotations

import sys

import zmq


def main() -> None:
    endpoint, reply_bytes = sys.argv[1], int(sys.argv[2])
    reply = b"\x00" * reply_bytes
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(endpoint)
    while True:
        frames = router.recv_multipart(copy=True)
        router.send_multipart([frames[0], b"", reply])


if __name__ == "__main__":
    main()
