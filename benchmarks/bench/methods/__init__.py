"""The methods compared, in the order the tables list them, and the order they
run in."""

from functools import partial

from bench.methods.base import Method
from bench.methods.joblib_mpire import (JoblibMethod, joblib_w1, joblib_w2, joblib_w3,
                                        mpire_w1, mpire_w2, mpire_w3)
from bench.methods.on_ray import (RayMethod, ray_w1, ray_w2, ray_w3, shmpool_ray_w1,
                                  shmpool_ray_w2)
from bench.methods.sharedarraypool import (shmpool_w1, shmpool_w2, shmpool_w3, shmpool_w4,
                                           shmpool_w5)
from bench.methods.stdlib import (fork_global_w1, fork_global_w2, pickle_w1, pickle_w2,
                                  pickle_w3, rawarray_w1, rawarray_w2, rawarray_w4, serial_w1,
                                  serial_w2, serial_w3, shm_w1, shm_w2)


def all_methods():
    ms = [
        Method("serial", "serial numpy", serial_w1, serial_w2, serial_w3,
               note="one process, no pool"),
        Method("pool_pickle", "Pool, chunks pickled", pickle_w1, pickle_w2, pickle_w3,
               note="plain multiprocessing.Pool (fork); W2 returns the chunks",
               slow=("w1", "w2")),
    ]
    for sm in ("spawn", "forkserver"):
        ms.append(Method("pool_pickle_" + sm, "Pool, " + sm,
                         w3=partial(pickle_w3, start_method=sm),
                         note="plain multiprocessing.Pool (%s): W3 only" % sm))
    ms.append(Method("pool_fork_global", "Pool, fork global", fork_global_w1, fork_global_w2,
                     note="copy-on-write global: read-only"))
    for sm in ("fork", "spawn", "forkserver"):
        ms.append(Method(
            "rawarray" if sm == "fork" else "rawarray_" + sm, "RawArray by hand, " + sm,
            partial(rawarray_w1, start_method=sm), partial(rawarray_w2, start_method=sm),
            w4=partial(rawarray_w4, start_method=sm), start_method=sm,
            note="RawArray of bytes viewed as the dtype, handed to a plain Pool through "
                 "its initializer (%s); W1 also times the 2-process floor" % sm))
    ms += [
        Method("shared_memory", "shared_memory", shm_w1, shm_w2,
               note="multiprocessing.shared_memory attached by name (fork)"),
        JoblibMethod("joblib", "joblib", joblib_w1, joblib_w2, joblib_w3, needs="joblib",
                     note="Parallel, loky; W1 auto-memmapping, W2 an explicit np.memmap",
                     slow=("w1", "w2", "w3")),
        Method("mpire", "mpire", mpire_w1, mpire_w2, mpire_w3, needs="mpire",
               note="shared_objects, fork, keep_alive", slow=("w1", "w2", "w3")),
    ]
    ray_method = RayMethod("ray", "Ray", None, None, None, needs="ray",
                           note="ray.util.multiprocessing.Pool + ray.put; "
                                "W1 set-up includes ray.init",
                           slow=("w1", "w2", "w3"))
    ray_method.w1 = lambda d: ray_w1(d, ray_method)
    ray_method.w2 = lambda d: ray_w2(d, ray_method)
    ray_method.w3 = lambda d: ray_w3(d, ray_method)
    ms.append(ray_method)
    shmpool_ray = RayMethod("shmpool_ray", "shmpool.ray", None, None, None, needs="ray",
                            note="shmpool.ray.SharedArrayPool(arrays={...}) on a local "
                                 "Ray; read-only arrays: results come back",
                            slow=("w1", "w2"))
    shmpool_ray.w1 = lambda d: shmpool_ray_w1(d, shmpool_ray)
    shmpool_ray.w2 = lambda d: shmpool_ray_w2(d, shmpool_ray)
    ms.append(shmpool_ray)
    for sm in ("fork", "spawn", "forkserver"):
        ms.append(Method("shmpool_" + sm, "shmpool, " + sm,
                         partial(shmpool_w1, start_method=sm),
                         partial(shmpool_w2, start_method=sm),
                         partial(shmpool_w3, start_method=sm),
                         w4=partial(shmpool_w4, start_method=sm), start_method=sm,
                         w5=partial(shmpool_w5, start_method=sm),
                         note="SharedArrayPool(arrays={...}) under %s; W1 places X "
                              "with shmpool.copy, as arrays= does" % sm))
    ms.append(Method("shmpool_empty", "shmpool, made in place",
                     lambda d: shmpool_w1(d, "fork", empty=True),
                     note="X made by shmpool.empty and filled in place: no copy (fork)"))
    return ms


#: The order the methods run in (each shmpool beside the RawArray of its start
#: method); the tables list them in the order all_methods() makes them.
RUN_ORDER = ["serial", "rawarray", "shmpool_fork", "shmpool_empty", "rawarray_spawn",
             "shmpool_spawn", "pool_pickle_spawn", "rawarray_forkserver", "shmpool_forkserver",
             "pool_pickle_forkserver", "shared_memory", "pool_fork_global", "pool_pickle",
             "joblib", "mpire", "ray", "shmpool_ray"]
