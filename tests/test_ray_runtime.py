"""Which Ray a command uses: `ray.address` null joins the running cluster (RAY_ADDRESS, or the
one started on this node), else starts a local one; `local` always starts a private one.
Joining a real `ray start --head` is tested in test_submit.py, beside the session's head."""
from __future__ import annotations

from bestofl.ray_runtime import cluster_address


def test_address_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # this node's Ray records live here
    assert cluster_address(None) == (None, "no RAY_ADDRESS and no cluster started on this node")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # a cluster that is gone
    address, why = cluster_address(None)
    assert address is None and why.endswith("names 127.0.0.1:9, which is not running")
    assert cluster_address("10.0.0.1:6379") == ("10.0.0.1:6379", "ray.address")
    assert cluster_address("local") == (None, "ray.address=local")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")  # what Ray sets inside a job
    assert cluster_address(None) == ("10.0.0.2:6379", "RAY_ADDRESS")
    assert cluster_address("local") == (None, "ray.address=local")
