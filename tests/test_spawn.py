"""Every behaviour in pool_cases, reference_cases, reliability_cases,
feature_cases, property_cases, pickling_cases, threads_cases, memmap_cases
and timeout_cases, under the 'spawn' start method."""

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
    "spawn" not in multiprocessing.get_all_start_methods(),
    reason="no spawn start method on this platform")


class TestPoolSpawn(pool_cases.PoolCases):
    start_method = "spawn"


class TestReferencesSpawn(reference_cases.ReferenceCases):
    start_method = "spawn"


class TestReliabilitySpawn(reliability_cases.ReliabilityCases):
    start_method = "spawn"


class TestFeaturesSpawn(feature_cases.FeatureCases):
    start_method = "spawn"


class TestPropertiesSpawn(property_cases.PropertyCases):
    start_method = "spawn"


class TestPicklingSpawn(pickling_cases.PicklingCases):
    start_method = "spawn"


class TestThreadsSpawn(threads_cases.ThreadsCases):
    start_method = "spawn"


class TestMemmapsSpawn(memmap_cases.MemmapCases):
    start_method = "spawn"


class TestTimeoutsSpawn(timeout_cases.TimeoutCases):
    start_method = "spawn"
