"""Models from URIs: a reward model on S3 (a local moto server) is copied once per node,
safetensors only, and loads where a folder does (score's check, serve's replicas)."""
from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest

from bestofl import models
from bestofl.config import load_config

RM_URI = "s3://bestofl-test/models/rm"


@pytest.fixture(scope="module")
def rm_on_s3(s3_server, tiny_rm):
    fs, path = pafs.FileSystem.from_uri(RM_URI)
    pafs.copy_files(str(tiny_rm), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    with fs.open_output_stream(f"{path}/pytorch_model.bin") as f:  # pickled: never fetched
        f.write(b"not to be unpickled")
    return RM_URI


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


@pytest.mark.slow  # a Serve app
def test_serve_loads_the_reward_model_from_s3(ray_cluster, rm_on_s3, s3_server, tiny_rm, tmp_path,
                                              monkeypatch):
    """`bestofl serve`'s run() on Ray Serve: its replicas copy the model from S3 (they get
    the credentials through env_vars) and score as the local folder does."""
    import socket

    import httpx
    from ray import serve

    from bestofl.reward.model import load_reward_model, score
    from bestofl.serving import PROXY_CHECK_ENV
    from pipelines.serve import run

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**s3_server, models.CACHE_ENV: str(tmp_path / "cache")}
    monkeypatch.setenv(models.CACHE_ENV, env[models.CACHE_ENV])
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port},
                controller_options={"runtime_env": {"env_vars": PROXY_CHECK_ENV}})
    try:
        cfg = load_config("serve", None, [f"model={rm_on_s3}", "ingress_num_cpus=0.1",
                                          "max_length=128"])
        cfg.env_vars = env
        run(cfg, block=False)
        texts = ["The answer is \\boxed{4}.", "It is \\boxed{5}."]
        body = {"question": "2+2?", "candidates": [{"text": t, "lang": "en"} for t in texts]}
        got = httpx.post(f"http://127.0.0.1:{port}/select", json=body, timeout=60).json()
        expected = score(*load_reward_model(str(tiny_rm)), ["2+2?"] * 2, texts, max_length=128,
                         batch_size=2)
        assert got["scores"] == pytest.approx(list(expected), abs=1e-4)
        assert os.listdir(tmp_path / "cache")  # the replicas' copy, on this node
    finally:
        serve.shutdown()
