"""``python -m quantbridge._shard_worker``: the local executor's worker process. It reads
one pickled :class:`~quantbridge._sharded.ShardTask` on stdin, runs it, and writes the
pickled result (or the exception it raised, with exit status 1) on stdout."""

from __future__ import annotations

import pickle
import sys

from quantbridge._sharded import run_shard


def main() -> int:
    task = pickle.load(sys.stdin.buffer)
    result: object
    try:
        result, status = run_shard(task), 0
    except Exception as exc:  # handed to the driver, which raises it
        result, status = exc, 1
    sys.stdout.buffer.write(pickle.dumps(result))
    sys.stdout.buffer.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
