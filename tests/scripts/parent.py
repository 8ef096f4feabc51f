"""Start a pool with a shared array, say its workers' pids and the array's file,
then wait to be killed.  A second argument, in hex, names this process first
(its comm, in /proc/PID/stat)."""
import ctypes
import multiprocessing
import os
import sys
import time

import numpy as np

import shmpool

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from conftest import shm_file

    if len(sys.argv) > 2:
        PR_SET_NAME = 15
        ctypes.CDLL(None).prctl(PR_SET_NAME, bytes.fromhex(sys.argv[2]), 0, 0, 0)
    ctx = multiprocessing.get_context(sys.argv[1])
    pool = shmpool.SharedArrayPool(2, arrays={"x": np.ones(16 << 20, np.uint8)}, context=ctx)
    pool.map(abs, range(8), chunksize=1)  # the workers are up and have the array
    print(*sorted(p.pid for p in pool._pool), flush=True)
    print(*shm_file(pool.arrays["x"]), flush=True)
    time.sleep(600)
