"""The suite's own layout: pytest imports test modules by basename (no packages under
tests/), so two files with one name in unit/ and integration/ break the collection of the
whole suite — which a run of either folder alone never shows."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_test_module_basenames_are_unique_across_folders():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1], sorted(n for n, c in names.items() if c > 1)
