"""The test matrix: every installed CPython from 3.7 to 3.13; 3.14 and 3.15 in a chroot.

    python -m nox -s tests-3.7 tests-3.13      # one session per Python
    python -m nox -s tests-3.13 -- -m fork     # arguments after -- go to conformance/run.py
    python -m nox -s quick-3.13                # only the default start method's tests
    python -m nox -s forky                     # 3.14 and 3.15, in a Debian forky chroot (root)
    python -m nox -l                           # list the sessions

A session installs the project (``pip install -e '.[test]'``), runs its own
tests (``python -m pytest``), then CPython's multiprocessing Pool tests with
SharedArrayPool (``python conformance/run.py``).  The interpreters are found as
``python3.X`` on PATH, with pyenv's versions put in front of it here, so nothing
needs to be set up by hand.  Virtualenvs go in ``.nox/``.
"""

import glob
import os

import nox
from nox.command import CommandFailed

PYTHONS = ["3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]

# pyenv's interpreters, without relying on a shell's PATH or shims.
_pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
_bins = sorted(glob.glob(os.path.join(_pyenv, "versions", "3.*", "bin")))
os.environ["PATH"] = os.pathsep.join(
    _bins + [p for p in os.environ.get("PATH", "").split(os.pathsep) if p not in _bins])

nox.options.sessions = ["tests"]
nox.options.error_on_missing_interpreters = True


# The stdlib's venv: made by the target interpreter itself, so 3.7 works
# whatever virtualenv release nox brings.
@nox.session(python=PYTHONS, venv_backend="venv")
def tests(session):
    """The project's tests, then the CPython conformance run."""
    session.run("python", "-c", "import test._test_multiprocessing",
                silent=True)  # this build ships the test package: else fail here
    session.install("-e", ".[test]")
    _pytest_and_conformance(session, [], session.posargs)


@nox.session(python=PYTHONS, venv_backend="venv")
def quick(session):
    """The tests of this Python's default start method only, and conformance
    under it (.ci/quick.py): for the Pythons between the oldest and the newest."""
    session.install("-e", ".[test]")
    tests = session.run("python", ".ci/quick.py", silent=True).split()
    method = session.run("python", ".ci/quick.py", "--method", silent=True).strip()
    _pytest_and_conformance(session, tests, ["-m", method])


def _pytest_and_conformance(session, pytest_args, conformance_args):
    """pytest, then conformance/run.py, both whatever the first one says."""
    failed = []
    for name, command in (("pytest", ["python", "-m", "pytest", "-q"] + pytest_args),
                          ("conformance", ["python", "conformance/run.py"] + conformance_args)):
        try:
            session.run(*command)
        except CommandFailed:
            failed.append(name)
    if failed:
        session.error("failed: %s" % ", ".join(failed))


@nox.session(python=PYTHONS, venv_backend="venv")
def conformance(session):
    """Only the CPython conformance run (arguments after -- go to it)."""
    session.install("-e", ".")
    session.run("python", "conformance/run.py", *session.posargs)


@nox.session(python=False)
def forky(session):
    """Pythons 3.14 and 3.15 (or those after --), which pyenv here lacks: the
    same two runs in a Debian forky chroot that .ci/forky-chroot.sh builds
    once and reuses (as root)."""
    session.run("bash", ".ci/forky-chroot.sh", "test", *session.posargs, external=True)
