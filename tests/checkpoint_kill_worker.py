"""Kills checkpoint saves at random moments, for tests/test_checkpoint_trust.py.

Run as ``python checkpoint_kill_worker.py FORMAT PATH SEED``. For each line
``save FIRST`` on stdin it forks a child that saves the two trees of :func:`trees`
alternately onto PATH, starting with ``trees()[FIRST]``, and writes a byte to a pipe
after each save returns. Once the child is ready (its first-use setup done), the
worker sleeps a random time of up to one and a half saves, SIGKILLs the child and
answers ``killed K`` (K: the saves that returned), so the test can restore PATH and
tell the old tree from the new one. The line ``finish FIRST`` runs one save of
``trees()[FIRST]`` to the end and answers ``saved``.

Forking is what makes many kills cheap: this process imports numpy, the checkpoint
module and orbax once, runs no JAX computation and starts no thread, so each child
starts at once. A child initializes orbax (and its threads) for itself, with one
save to a scratch directory before the saves that are killed.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import sys
import tempfile
import time
import traceback

# numpy's BLAS would start a thread pool at import: one thread, so forking is safe
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import numpy as np  # noqa: E402


def trees() -> list[dict]:
    """Two trees that differ in every array and scalar, with several arrays (1 MB
    in all, so a save takes some milliseconds): a mix of the two restores as
    neither."""
    rng = np.random.default_rng(0)
    result = []
    for tag in range(2):
        result.append(
            {
                "tag": tag,
                "params": [
                    rng.standard_normal(1 << 16).astype(np.float32) for _ in range(3)
                ],
                "state": (np.full((64, 64), tag, np.int32), f"tree {tag}"),
            }
        )
    return result


def only_thread() -> None:
    """Wait until this process runs one thread (an import may leave one finishing
    briefly): a fork copies only the calling thread, so another's locks would be
    held forever in the child."""
    deadline = time.monotonic() + 10
    while len(os.listdir("/proc/self/task")) > 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the kill worker runs more than one thread")
        time.sleep(0.01)


def child(saved: list, fmt: str, path: str, first: int, pipe: int) -> None:
    """Warm up, then save the trees alternately onto ``path`` (``first < 0``: save
    ``saved[-first - 1]`` once and exit); never returns."""
    from functorch_optim import checkpoint

    with tempfile.TemporaryDirectory() as scratch:  # orbax's and JAX's first use
        checkpoint.save(os.path.join(scratch, "warm"), saved[0], format=fmt)
    os.write(pipe, b"r")
    if first < 0:
        checkpoint.save(path, saved[-first - 1], format=fmt)
        os._exit(0)
    for i in itertools.count(first):
        checkpoint.save(path, saved[i % 2], format=fmt)
        os.write(pipe, b"s")


def fork(saved: list, fmt: str, path: str, first: int) -> tuple[int, int]:
    """A child running :func:`child`, and the read end of its pipe."""
    only_thread()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            child(saved, fmt, path, first, write)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(1)
    os.close(write)
    return pid, read


def main() -> None:
    fmt, path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    import flax.serialization  # noqa: F401  (imported once, used in the children)
    import orbax.checkpoint  # noqa: F401

    import functorch_optim.checkpoint  # noqa: F401

    rng = random.Random(seed)
    saved = trees()  # built once, shared with every child
    save_time = None  # measured in the first trial, on a warm child
    for line in sys.stdin:
        command, first = line.split()
        if command == "finish":
            pid, read = fork(saved, fmt, path, -int(first) - 1)
            _, status = os.waitpid(pid, 0)
            os.close(read)
            print("saved" if status == 0 else "failed", flush=True)
            continue
        pid, read = fork(saved, fmt, path, int(first))
        if os.read(read, 1) != b"r":
            raise RuntimeError("the child died warming up")
        if save_time is None:
            start = time.monotonic()
            if os.read(read, 1) != b"s":
                raise RuntimeError("the child died saving")
            save_time = time.monotonic() - start
            returned = 1
        else:
            returned = 0
        time.sleep(rng.uniform(0, 1.5 * save_time))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        while chunk := os.read(read, 1024):
            returned += len(chunk)
        os.close(read)
        print(f"killed {returned}", flush=True)


if __name__ == "__main__":
    main()
