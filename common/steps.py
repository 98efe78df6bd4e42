"""Load a numbered step script as a module, so the scripts beyond the ladder build on its pipeline.

A step's file name starts with a digit (`7_cuda_graph.py`), which `import` cannot name; this loads it by
path instead. Its `main()` does not run: every step guards it with `if __name__ == "__main__"`.
"""
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load(stem):
    """The module of step `stem` (e.g. "7_cuda_graph"), loaded once per process."""
    name = f"step_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
