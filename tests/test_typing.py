"""Type hints (issue 8): ``mypy --strict shmpool`` finds nothing, and the public
API reads to a user as tests/typing_usage.py expects."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(sys.version_info < (3, 8), reason="mypy runs on 3.8+")


def mypy_strict(*targets):
    """Run ``python -m mypy --strict`` on ``targets`` from the project's root,
    where setup.cfg's [mypy] section applies; assert that it finds nothing."""
    pytest.importorskip("mypy")
    numpy = pytest.importorskip("numpy")
    if int(numpy.__version__.split(".")[0]) < 2:
        pytest.skip("numpy's type stubs before 2.0 lack the buffer protocol "
                    "(a ctypes array as a buffer, memoryview of an ndarray)")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict"] + list(targets), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
        timeout=280)
    assert result.returncode == 0, result.stdout


@pytest.mark.timeout(300)  # mypy takes up to a minute without its cache
def test_mypy_strict_package():
    mypy_strict("shmpool")


@pytest.mark.timeout(300)
def test_public_api_types():
    mypy_strict("shmpool", os.path.join("tests", "typing_usage.py"))
