"""Every pool behaviour in pool_cases, under the 'fork' start method."""

import multiprocessing

import pytest

import pool_cases

pytestmark = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(),
    reason="no fork start method on this platform")


class TestPoolFork(pool_cases.PoolCases):
    start_method = "fork"
