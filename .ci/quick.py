"""The tests of a quick run, for the Pythons between the oldest and the newest
(CI runs every test on 3.7, 3.11 and 3.15): the test files of this Python's
default start method and those that have none, as pytest arguments; with
``--method``, that start method alone (for conformance/run.py -m)."""

import multiprocessing
import sys

method = multiprocessing.get_start_method()
if sys.argv[1:] == ["--method"]:
    print(method)
else:
    print(" ".join(["tests/test_%s.py" % method, "tests/test_executor_%s.py" % method,
                    "tests/test_memory.py", "tests/test_small_shm.py", "tests/test_readme.py"]))
