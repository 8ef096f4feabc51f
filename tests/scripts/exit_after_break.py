"""Break out of imap over shared arrays, with or without a with block (argv[2]:
'with' or 'open'), then exit: print the time just before the end of the script."""
import multiprocessing
import sys
import time

import shmpool


def slow(x):
    time.sleep(0.05)
    return x.shape


if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    X = shmpool.zeros(1000)
    pool = shmpool.SharedArrayPool(2, context=ctx)
    if sys.argv[2] == "with":
        with pool:
            for _ in pool.imap(slow, [X] * 200):
                break
    else:
        for _ in pool.imap(slow, [X] * 200):
            break
    print(time.time(), flush=True)
