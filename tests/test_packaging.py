"""The built wheel holds everything under the one `harness` namespace and works without the checkout."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def source_copy(dest: Path) -> Path:
    """What the wheel is built from, copied: setuptools writes build/ and *.egg-info next to
    pyproject.toml, and the test must leave the checkout as it found it."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("harness", "methods", "benchmarks", "leaderboard"):
        shutil.copytree(REPO / name, dest / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    return dest


def test_wheel_installs_and_imports_outside_the_checkout(tmp_path):
    src = source_copy(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("unlearning_harness-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "harness/methods/ga.py" in names and "harness/benchmarks/synthetic.py" in names
    assert "harness/leaderboard/markdown.py" in names
    assert "harness/leaderboard/papers/muse_news.json" in names
    assert not [n for n in names if n.split("/")[0] in ("methods", "benchmarks", "leaderboard", "tests")]
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    probe = ("import harness, harness.methods.ga, harness.benchmarks.synthetic;"
             "from harness.registry import METHODS, BENCHMARKS;"
             "print(harness.__file__, 'ga' in METHODS.names(), 'synthetic' in BENCHMARKS.names())")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         check=True, capture_output=True, text=True).stdout
    assert out.startswith(str(target)) and out.strip().endswith("True True")
