"""Shared fixtures: small generated data sets and tiny architectures."""

from __future__ import annotations

from pathlib import Path

import pytest

from search_spaces import ArchConfig
from tests._archs import TINY_ARCH
from trainers.data import ShapesVQAConfig, VQAData, generate_shapes_vqa


@pytest.fixture(scope="session", autouse=True)
def _private_lock_dir(tmp_path_factory: pytest.TempPathFactory, worker_id: str):
    """Tests (and the searches they start) take the measuring lock in their own folder,
    so a real study running on this host neither waits for them nor slows them. The
    pytest-xdist workers of one run share it: a latency one worker measures is not
    timed while another trains."""
    import os

    from common import LOCK_DIR_ENV

    before = os.environ.get(LOCK_DIR_ENV)
    base = tmp_path_factory.getbasetemp()
    locks = (base if worker_id == "master" else base.parent) / "locks"
    locks.mkdir(exist_ok=True)
    os.environ[LOCK_DIR_ENV] = str(locks)
    yield
    if before is None:
        os.environ.pop(LOCK_DIR_ENV, None)
    else:
        os.environ[LOCK_DIR_ENV] = before


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "shapes"
    return generate_shapes_vqa(root, ShapesVQAConfig(seed=3, train_images=64, val_images=16))


@pytest.fixture(scope="session")
def shapes_data(shapes_root: Path) -> VQAData:
    return VQAData.load(shapes_root)


@pytest.fixture
def tiny_arch() -> ArchConfig:
    return TINY_ARCH
