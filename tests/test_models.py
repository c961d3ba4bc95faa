"""Models from URIs: a reward model on S3 (a local moto server) is copied once per node,
safetensors only, and loads where a folder does (score's check; score's actors and serve's
replicas load it in tests/test_score.py and tests/test_serving.py)."""
from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest

from bestofl import models

def test_uri_model_is_copied_once_safetensors_only(rm_on_s3, tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    local = models.local_model(rm_on_s3)
    assert local.startswith(str(tmp_path / "cache")) and os.path.isfile(os.path.join(local, "config.json"))
    assert any(n.endswith(".safetensors") for n in os.listdir(local))
    assert "pytorch_model.bin" not in os.listdir(local)
    stamp = os.stat(os.path.join(local, "config.json")).st_mtime_ns
    assert models.local_model(rm_on_s3) == local  # cached: no second copy
    assert os.stat(os.path.join(local, "config.json")).st_mtime_ns == stamp
    assert sorted(os.listdir(tmp_path / "cache")) == sorted([os.path.basename(local), os.path.basename(local) + ".lock"])
    models.check_reward_model(rm_on_s3)  # score's and serve's check before Ray
    assert models.local_model("Org/hub-id") == "Org/hub-id"  # the HF cache handles hub ids


def test_missing_or_pickle_only_uri_is_refused(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="model not found: s3://bestofl-test/models/nothing-here"):
        models.local_model("s3://bestofl-test/models/nothing-here")
    fs, path = pafs.FileSystem.from_uri("s3://bestofl-test/models/pickled")
    with fs.open_output_stream(f"{path}/pytorch_model.bin") as f:
        f.write(b"x")
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        models.check_reward_model("s3://bestofl-test/models/pickled")
