"""Every behaviour in executor_cases, under the 'spawn' start method."""

import multiprocessing

import pytest

import executor_cases

pytestmark = pytest.mark.skipif(
    "spawn" not in multiprocessing.get_all_start_methods(),
    reason="no spawn start method on this platform")


class TestExecutorSpawn(executor_cases.ExecutorCases):
    start_method = "spawn"
