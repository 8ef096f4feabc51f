"""Every pool behaviour in pool_cases, under the 'spawn' start method."""

import multiprocessing

import pytest

import pool_cases

pytestmark = pytest.mark.skipif(
    "spawn" not in multiprocessing.get_all_start_methods(),
    reason="no spawn start method on this platform")


class TestPoolSpawn(pool_cases.PoolCases):
    start_method = "spawn"
