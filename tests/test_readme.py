"""The README's examples run as they are written."""

import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "README.rst")


def code_blocks():
    text = open(README).read()
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text)
    return [re.sub(r"(?m)^    ", "", b) for b in blocks]


def run_example(code, tmp_path, env=None):
    """Run one of the README's examples as a script; check what it prints."""
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    # a print() whose line ends in a comment shows what it prints
    expected = re.findall(r"(?m)^\s*print\(.*\)\s*# (.*)$", code)
    assert proc.stdout.splitlines() == expected


@pytest.mark.parametrize("code", code_blocks())
def test_readme_example_runs(code, tmp_path):
    if "shmpool.ray" in code:
        pytest.skip("test_ray.py runs it, on its own Ray instance")
    run_example(code, tmp_path)


def test_readme_shows_the_two_commands():
    text = open(README).read()
    assert "python -m pip install -e . && python -m shmpool.demo" in text
    assert "python -m pip install -e '.[test]' && python -m pytest" in text
    ci = open(os.path.join(os.path.dirname(README), ".ci", "run")).read()
    assert "python -m pytest" in ci
