"""Every behaviour in pool_cases, reference_cases, reliability_cases,
feature_cases, property_cases, pickling_cases, threads_cases, memmap_cases
and timeout_cases, under the 'fork' start method."""

import multiprocessing

import pytest

import feature_cases
import memmap_cases
import pickling_cases
import pool_cases
import property_cases
import reference_cases
import reliability_cases
import threads_cases
import timeout_cases

pytestmark = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(),
    reason="no fork start method on this platform")


class TestPoolFork(pool_cases.PoolCases):
    start_method = "fork"


class TestReferencesFork(reference_cases.ReferenceCases):
    start_method = "fork"


class TestReliabilityFork(reliability_cases.ReliabilityCases):
    start_method = "fork"


class TestFeaturesFork(feature_cases.FeatureCases):
    start_method = "fork"


class TestPropertiesFork(property_cases.PropertyCases):
    start_method = "fork"


class TestPicklingFork(pickling_cases.PicklingCases):
    start_method = "fork"


class TestThreadsFork(threads_cases.ThreadsCases):
    start_method = "fork"


class TestMemmapsFork(memmap_cases.MemmapCases):
    start_method = "fork"


class TestTimeoutsFork(timeout_cases.TimeoutCases):
    start_method = "fork"
