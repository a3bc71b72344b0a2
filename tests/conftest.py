"""Shared pytest fixtures. Real-data tests use ../shared/data and skip when it is absent."""
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("GGTALKER_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data():
    """Path to the read-only sample media; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"sample media not found at {SHARED_DATA}")
    return SHARED_DATA
