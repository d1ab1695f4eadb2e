"""Suite-wide test settings."""

from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    """Run the slow end-to-end tests first, so that under pytest-xdist they overlap with the many short ones
    instead of running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
