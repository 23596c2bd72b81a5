"""Fixture sources (trlm/data/fixtures.py) and a helper to build blend configs over them."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from trlm.config import DataConfig
from trlm.data.fixtures import write_fixture_sources


@pytest.fixture(scope="session")
def fixture_sources(tmp_path_factory) -> tuple[Path, dict[str, dict[int, str]]]:
    out = tmp_path_factory.mktemp("sources")
    return out, write_fixture_sources(out)


@pytest.fixture
def blend_cfg():
    def _blend(**fields) -> DataConfig:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), fields))

    return _blend
