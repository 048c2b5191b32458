"""Shared pytest setup: headless Qt, the repository root and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before any test module imports Qt: widgets are created offscreen, so tests run without a display.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml registers it too; repeating it keeps `-m slow` warning-free when pytest runs from
    # a directory where that file is not the rootdir's config.
    config.addinivalue_line("markers", "slow: longer tests (seconds to a minute)")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root folder (the one holding pyproject.toml)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data(repo_root: Path) -> Path:
    """The project's shared data folder, ``../shared/data`` beside the repository; skips when absent."""
    path = (repo_root.parent / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent (it lies beside the repository in the full "
                    "checkout and in CI)")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module: on a 2-core machine shared with other jobs, two
    threads that wait for each other at every parallel region make small tensors many times slower
    (torch's setting is process-wide, so it is restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
