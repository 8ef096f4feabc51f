"""Every behaviour in executor_cases, under the 'fork' start method."""

import multiprocessing

import pytest

import executor_cases

pytestmark = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(),
    reason="no fork start method on this platform")


class TestExecutorFork(executor_cases.ExecutorCases):
    start_method = "fork"
