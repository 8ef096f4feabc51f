import gc
import multiprocessing
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def shm_used():
    """Bytes in use on /dev/shm, unlinked-but-open files included, once garbage
    from earlier tests is collected."""
    gc.collect()
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def open_fds():
    gc.collect()
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


def run_script(name, *args, timeout=120):
    """Run tests/scripts/NAME as __main__ in a fresh interpreter; return stdout."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "scripts", name)] + list(args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
        universal_newlines=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
