"""Every behaviour in pool_cases, reference_cases, reliability_cases,
feature_cases, property_cases, pickling_cases, threads_cases, memmap_cases
and timeout_cases, under the 'forkserver' start method."""

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
    "forkserver" not in multiprocessing.get_all_start_methods(),
    reason="no forkserver start method on this platform")


class TestPoolForkserver(pool_cases.PoolCases):
    start_method = "forkserver"


class TestReferencesForkserver(reference_cases.ReferenceCases):
    start_method = "forkserver"


class TestReliabilityForkserver(reliability_cases.ReliabilityCases):
    start_method = "forkserver"


class TestFeaturesForkserver(feature_cases.FeatureCases):
    start_method = "forkserver"


class TestPropertiesForkserver(property_cases.PropertyCases):
    start_method = "forkserver"


class TestPicklingForkserver(pickling_cases.PicklingCases):
    start_method = "forkserver"


class TestThreadsForkserver(threads_cases.ThreadsCases):
    start_method = "forkserver"


class TestMemmapsForkserver(memmap_cases.MemmapCases):
    start_method = "forkserver"


class TestTimeoutsForkserver(timeout_cases.TimeoutCases):
    start_method = "forkserver"
