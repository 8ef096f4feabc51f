import gc
import multiprocessing
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def collect():
    """Collect garbage, and let go of the holds that have ended (shmpool does
    so when it next sends or allocates, and in a pool's supervisor thread)."""
    from shmpool import inflight

    gc.collect()
    inflight.release()


def shm_used():
    """Bytes in use on /dev/shm, unlinked-but-open files included, once garbage
    from earlier tests is collected."""
    collect()
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def shm_file(a):
    """(device, inode) of the /dev/shm file behind a shared array."""
    from shmpool import blocks, ndarrays

    fd = blocks.block_of(ndarrays.locate(a)[0]).name.fd
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def file_in_use(dev_ino):
    """Whether any process on the machine still maps or holds open the file:
    its memory is returned to the system exactly when none does."""
    dev, ino = dev_ino
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/maps" % pid) as maps:
                for line in maps:
                    fields = line.split()
                    if len(fields) > 5 and fields[4] == str(ino) and "pym-" in fields[5]:
                        return True
            for fd in os.listdir("/proc/%s/fd" % pid):
                try:
                    st = os.stat("/proc/%s/fd/%s" % (pid, fd))
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) == (dev, ino):
                    return True
        except OSError:
            continue
    return False


def open_fds():
    collect()
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_processes_left():
    """Every test leaves no child process behind."""
    yield
    children = multiprocessing.active_children()  # also reaps finished ones
    for p in children:
        p.terminate()
        p.join(5)
    assert not children, "test left processes behind: %r" % (children,)


def shm_files():
    # multiprocessing's own semaphores (sem.mp-*) live until their locks are
    # collected or its resource tracker removes them at exit; .ci/run checks
    # /dev/shm after the whole run.
    names = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    return {n for n in names if not n.startswith("sem.mp-")}


@pytest.fixture(scope="session", autouse=True)
def no_shm_files_left():
    """The suite leaves no file of its own in /dev/shm."""
    before = shm_files()
    yield
    gc.collect()
    after = shm_files()
    assert after <= before, "files left in /dev/shm: %r" % sorted(after - before)


class StartMethodCases(object):
    """Base of the *_cases mixins: test_fork/spawn/forkserver set start_method."""

    start_method = None

    @property
    def ctx(self):
        return multiprocessing.get_context(self.start_method)

    def pool(self, *args, **kwds):
        from shmpool import SharedArrayPool

        kwds.setdefault("context", self.ctx)
        return SharedArrayPool(*args, **kwds)


def process_alive(pid):
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:  # (a name may be any bytes)
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def script_env():
    """The environment for a script run as a subprocess: it imports this
    checkout's shmpool, wherever the tests were launched from."""
    env = dict(os.environ)
    root = os.path.dirname(HERE)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def run_script(name, *args, timeout=120):
    """Run tests/scripts/NAME as __main__ in a fresh interpreter; return stdout."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "scripts", name)] + list(args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
        universal_newlines=True, env=script_env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def drain(iterator):
    """Every value of ``iterator``, the exception standing for a failed one."""
    out = []
    while True:
        try:
            out.append(next(iterator))
        except StopIteration:
            return out
        except Exception as e:
            out.append(e)
