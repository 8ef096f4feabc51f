"""benchmarks/compare.py: its reports from given samples, and a tiny run whose
spawn and forkserver workers find the benchmark's task functions by name."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARE = os.path.join(ROOT, "benchmarks", "compare.py")

pytestmark = pytest.mark.skipif(sys.version_info < (3, 8),
                                reason="the benchmark uses multiprocessing.shared_memory")


def compare(*args):
    proc = subprocess.run([sys.executable, COMPARE] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def method(**samples):
    return {"label": "", "note": "", "errors": [], "wrong": [], "samples": samples,
            "repeats": {k: list(range(len(v))) for k, v in samples.items()}}


def test_by_start_method_table_gives_the_ratios_of_the_medians(tmp_path):
    run_args = {"workers": 2, "tasks": 10, "calls": 10, "w1_mib": 1, "w2_mib": 1,
                "chunks": 4, "w4_mib": 2, "w4_tasks": 2, "argv": [], "repeats": 2,
                "quick": False, "methods": "", "skip": "", "workloads": "w1"}
    results = {
        "rawarray": method(w1_map1=[0.4, 0.4], w1_map2=[0.4, 0.6], w1_floor=[0.2, 0.2],
                           w1_cpu2=[0.02, 0.02], w4_small=[0.01, 0.01], w4_big=[0.01, 0.01],
                           w4_factor=[1.0, 1.0]),
        "shmpool_fork": method(w1_map1=[0.3, 0.3], w1_map2=[0.2, 0.3], w1_cpu2=[0.01, 0.03],
                               w4_small=[0.01, 0.01], w4_big=[0.03, 0.03],
                               w4_factor=[3.0, 3.0]),
    }
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps({"args": run_args, "results": results, "elapsed": 1.0}))
    compare("--from-json", str(saved), "--out", str(tmp_path / "out"), "--publish", "no")
    report = (tmp_path / "out" / "compare.md").read_text()
    # warm map 0.25 / 0.5; over the floor 0.25 / 0.2 (not met); 1st map 0.3 / 0.2 (not met);
    # parent CPU 0.02 / 0.02; W4 growth 3.0 / 1.0 (not met).
    row = next(line for line in report.splitlines() if line.startswith("| fork |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["fork", "0.50", "**1.25**", "**1.50**", "1.00"]
    assert "**3.00**" in cells
    assert cells[-1] == "0.020 vs 0.020"


def test_tiny_run_with_spawn_and_forkserver_workers(tmp_path):
    out = compare("--repeats", "0", "--workloads", "w1,w4,w5", "--w1-mib", "1", "--w2-mib",
                  "1", "--chunks", "4", "--tasks", "10", "--calls", "10", "--w4-mib", "2",
                  "--w4-tasks", "2", "--w5-size", "64", "--w5-tasks", "4", "--methods",
                  "rawarray_spawn,shmpool_spawn,rawarray_forkserver,shmpool_forkserver",
                  "--out", str(tmp_path), "--publish", "no")
    assert "ERROR" not in out and "WRONG" not in out, out
    saved = json.loads((tmp_path / "compare.json").read_text())
    for name in ("rawarray_spawn", "shmpool_spawn", "rawarray_forkserver",
                 "shmpool_forkserver"):
        samples = saved["results"][name]["samples"]
        assert {"w1_map2", "w1_cpu2", "w4_small", "w4_big"} <= set(samples), name
    assert "w1_floor" in saved["results"]["rawarray_spawn"]["samples"]
    for name in ("shmpool_spawn", "shmpool_forkserver"):  # W5 checked the BLAS threads too
        assert {"w5_free", "w5_capped", "w5_ratio"} <= set(saved["results"][name]["samples"])
