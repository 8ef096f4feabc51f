"""Run a long map, be interrupted with SIGINT, and check that the with block
left no worker and no shared block behind."""
import gc
import multiprocessing
import os
import signal
import sys
import time

import numpy as np

import shmpool


def slow(i):
    time.sleep(0.2)
    return i


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from conftest import file_in_use, process_alive, shm_file

    # Ctrl-C raises KeyboardInterrupt even where the launcher ignores SIGINT
    # (a background job of a non-interactive shell: the interpreter then
    # leaves it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ctx = multiprocessing.get_context(sys.argv[1])
    interrupted = False
    try:
        with shmpool.SharedArrayPool(2, arrays={"x": np.ones(1 << 20)}, context=ctx) as pool:
            pool.map(abs, range(8), chunksize=1)
            pids = [p.pid for p in pool._pool]
            block = shm_file(pool.arrays["x"])
            print(*pids, flush=True)
            print(*block, flush=True)
            pool.map(slow, range(1000), chunksize=1)
    except KeyboardInterrupt:
        interrupted = time.monotonic()  # the with block has ended: workers gone
    del pool
    gc.collect()
    print("KeyboardInterrupt" if interrupted else "not-interrupted", interrupted,
          "workers-left" if any(map(process_alive, pids)) else "no-workers",
          "block-left" if file_in_use(block) else "no-block")
