"""Every behaviour in executor_cases, under the 'forkserver' start method."""

import multiprocessing

import pytest

import executor_cases

pytestmark = pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(),
    reason="no forkserver start method on this platform")


class TestExecutorForkserver(executor_cases.ExecutorCases):
    start_method = "forkserver"
