"""The model registry in Redis: two nodes with separate caches sharing only Redis (DB 13).

Real Redis, real bundles, real ``ModelHolder``s: a promotion reaches both nodes; a bundle
tampered with in Redis is refused by both (at download, by the local bundle verification, or
by the signature) while the previous model keeps serving; rolling back works.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nearwatch.detector import Detector
from nearwatch.detector.errors import BundleError
from nearwatch.detector.store.bundle import read_bundle, write_bundle
from nearwatch.detector.store.registry import POINTER, ModelRegistry
from nearwatch.worker.remote_registry import MirroredRegistry, open_registry
from nearwatch.worker.remote_store import RedisModelStore
from nearwatch.worker.runtime import ModelHolder
from nearwatch.worker.settings import Settings

from tests.service_fixtures import flushed_redis

URL = "redis://127.0.0.1:6379/13"
KEY = b"remote-registry-test-key"
CHUNK = 1024  # small chunks: every file spans several


@pytest.fixture
def client() -> Iterator[Any]:
    yield from flushed_redis(URL)


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, bundles: tuple[Path, Path]
           ) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("signed")
    return _sign(bundles[0], root / "a", KEY), _sign(bundles[1], root / "b", KEY)


def _sign(source: Path, target: Path, key: bytes) -> Path:
    manifest, files = read_bundle(source)
    write_bundle(target, manifest, files, signing_key=key)
    return target


class Counts:
    """Stands in for ServiceMetrics: what ModelHolder reports."""

    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.refused = 0

    def model_loaded(self, version: str, detector: Detector) -> None:
        self.loaded.append(version)

    def model_refused(self) -> None:
        self.refused += 1


def _node(cache: Path, key: bytes | None = KEY) -> tuple[ModelHolder, Counts]:
    import redis

    store = RedisModelStore(redis.Redis.from_url(URL), key, location=URL)  # its own connection
    counts = Counts()
    holder = ModelHolder(MirroredRegistry(store, cache), 0.0, counts)  # type: ignore[arg-type]
    return holder, counts


def _flip_chunk(client: Any, store: RedisModelStore, version: str, name: str) -> None:
    key = store.key(version, name, "0")
    data = bytearray(client.get(key))
    data[-1] ^= 0xFF
    client.set(key, bytes(data))


def _model(bundle: Path) -> str:
    return str(Detector.load(bundle).model_version_)


def test_two_nodes_follow_promotions_and_refuse_tampering(
        tmp_path: Path, client: Any, signed: tuple[Path, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    store = RedisModelStore(client, KEY, location=URL, chunk_bytes=CHUNK)
    assert store.add(signed[0], promote=True) == "v0001"
    nodes = [_node(tmp_path / "node1"), _node(tmp_path / "node2")]
    for holder, counts in nodes:
        assert holder.load_initial()
        assert holder.current()[0] == "v0001" and counts.loaded == ["v0001"]
        assert holder.current()[1].model_version_ == _model(signed[0])
        cache = Path(holder.registry.root)
        assert (cache / POINTER).read_text() == "v0001\n"
        assert not [p for p in cache.iterdir() if p.name.startswith(".fetching")]
    calibration = json.loads(client.get(store.key("v0001", "index")))["files"]["calibration.npy"]
    assert calibration["chunks"] > 1  # the test exercises re-assembly

    # a promotion reaches both nodes
    assert store.add(signed[1], promote=True) == "v0002"
    for holder, counts in nodes:
        version, detector = holder.current()
        assert version == "v0002" and detector.model_version_ == _model(signed[1])
        assert counts.loaded == ["v0001", "v0002"] and counts.refused == 0

    # 1. a chunk changed in Redis: refused at download, nothing enters the caches
    bad = store.add(signed[0])
    _flip_chunk(client, store, bad, "calibration.npy")
    store.set_current(bad)  # what an attacker with Redis access can do (no verification)
    caplog.set_level(logging.ERROR, logger="nearwatch.worker")
    for holder, counts in nodes:
        version, detector = holder.current()
        assert version == "v0002" and detector.model_version_ == _model(signed[1])
        assert counts.refused == 1 and not (Path(holder.registry.root) / bad).exists()
        assert (Path(holder.registry.root) / POINTER).read_text() == "v0002\n"
    assert f"refusing model {bad}, keeping v0002" in caplog.text
    assert "checksum mismatch for calibration.npy: the bundle in Redis was modified" in caplog.text
    downloads: list[str] = []
    first_store = nodes[0][0].registry.store
    real_download = first_store.download
    first_store.download = lambda v, target: (downloads.append(v), real_download(v, target))[1]
    assert nodes[0][0].current()[0] == "v0002" and downloads == []  # refused once, not again
    with pytest.raises(BundleError, match="checksum mismatch for calibration.npy"):
        MirroredRegistry(store, tmp_path / "cli").promote(bad)  # `nearwatch models promote`

    # 2. chunk *and* index changed: the download passes, the local verification refuses it
    worse = store.add(signed[0])
    _flip_chunk(client, store, worse, "calibration.npy")
    index = json.loads(client.get(store.key(worse, "index")))
    assembled = tmp_path / "assembled"
    with pytest.raises(BundleError):
        store.download(worse, assembled)
    index["files"]["calibration.npy"]["sha256"] = _sha256(assembled / "calibration.npy")
    client.set(store.key(worse, "index"), json.dumps(index))
    caplog.clear()
    store.set_current(worse)
    for holder, counts in nodes:
        assert holder.current()[0] == "v0002" and counts.refused == 2
    assert f"refusing model {worse}, keeping v0002" in caplog.text
    assert "checksum mismatch for calibration.npy: the bundle was modified" in caplog.text

    # 3. a consistent bundle signed with another key (uploaded around `models add`)
    other = _sign(signed[0], tmp_path / "other", b"another key")
    forged = RedisModelStore(client, b"another key", location=URL).add(other)
    caplog.clear()
    store.set_current(forged)
    for holder, counts in nodes:
        assert holder.current()[0] == "v0002" and counts.refused == 3
    assert "the signature does not match" in caplog.text

    # roll back to v0001 the way `nearwatch models promote v0001` does: both nodes follow
    MirroredRegistry(store, tmp_path / "cli").promote("v0001")
    assert store.current_version() == "v0001"
    for holder, counts in nodes:
        version, detector = holder.current()
        assert version == "v0001" and detector.model_version_ == _model(signed[0])
        assert counts.loaded[-1] == "v0001" and counts.refused == 3
    listed = [(m.version, m.current) for m in MirroredRegistry(store, tmp_path / "x").list()]
    assert listed == [("v0001", True), ("v0002", False), (bad, False), (worse, False),
                      (forged, False)]


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_add_refuses_bad_bundles_and_publishes_only_complete_versions(
        tmp_path: Path, client: Any, signed: tuple[Path, Path], bundles: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = RedisModelStore(client, KEY, location=URL, chunk_bytes=CHUNK)
    with pytest.raises(BundleError, match="is not signed"):
        store.add(bundles[0], promote=True)
    tampered = tmp_path / "tampered"
    shutil.copytree(signed[0], tampered)
    (tampered / "calibration.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(BundleError, match=r"checksum mismatch for calibration\.npy"):
        store.add(tampered, promote=True)
    assert client.keys("*") == []  # nothing uploaded before the bundle verified

    # an upload interrupted halfway: the version never appears, its chunks are removed
    uploaded: list[str] = []
    real_upload = store._upload

    def failing(version: str, path: Path, written: list[str]) -> dict[str, Any]:
        if uploaded:
            raise ConnectionError("Redis went away")
        uploaded.append(path.name)
        return real_upload(version, path, written)

    monkeypatch.setattr(store, "_upload", failing)
    with pytest.raises(ConnectionError):
        store.add(signed[0], promote=True)
    assert store.versions() == [] and store.current_version() is None
    assert sorted(k.decode() for k in client.keys("*")) == [store.key("next")]
    with pytest.raises(BundleError, match="has no version v0001"):
        store.index("v0001")
    monkeypatch.undo()
    assert store.add(signed[0]) == "v0002" and store.current_version() is None
    registry = MirroredRegistry(store, tmp_path / "cache")
    with pytest.raises(BundleError, match=f"{URL} has no current model: add one with"):
        registry.load_current()
    with pytest.raises(BundleError, match="has no version v0001"):
        registry.promote("v0001")
    client.set(store.key("current"), "../etc")
    with pytest.raises(BundleError, match=r"current: not a version name: '\.\./etc'"):
        registry.current_version()


def test_a_node_keeps_serving_while_redis_is_unreachable(
        tmp_path: Path, client: Any, signed: tuple[Path, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    import redis

    from tests.service_fixtures import free_port

    RedisModelStore(client, KEY).add(signed[0], promote=True)
    holder, counts = _node(tmp_path / "cache")
    assert holder.load_initial()
    registry = holder.registry
    assert isinstance(registry, MirroredRegistry)
    registry.store.client = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    caplog.set_level(logging.WARNING, logger="nearwatch.worker")
    assert holder.current()[0] == "v0001" and counts.refused == 0
    assert registry.current_version() == "v0001"  # the local CURRENT: last version verified
    assert caplog.text.count(f"model registry {URL} unreachable") == 1  # logged once
    # a node restarted during the outage serves its cached model
    restarted = MirroredRegistry(registry.store, registry.root)
    assert restarted.load_current()[0] == "v0001"
    registry.store.client = client
    assert registry.current_version() == "v0001"
    assert f"model registry {URL} reachable again" in caplog.text


def test_settings_choose_the_backend(tmp_path: Path) -> None:
    remote = Settings.from_env({"NEARWATCH_MODEL_DIR": URL,
                                "NEARWATCH_MODEL_CACHE": str(tmp_path / "cache")})
    assert remote.model_store == URL and remote.model_cache == tmp_path / "cache"
    registry = open_registry(remote)
    assert isinstance(registry, MirroredRegistry) and registry.root == tmp_path / "cache"
    local = Settings.from_env({"NEARWATCH_MODEL_DIR": str(tmp_path / "models")})
    assert local.model_store is None and local.model_dir == tmp_path / "models"
    plain = open_registry(local)
    assert type(plain) is ModelRegistry and plain.root == tmp_path / "models"
    secret = RedisModelStore.from_url("redis://:hunter2@127.0.0.1:6379/13")
    assert secret.location == "redis://***@127.0.0.1:6379/13"


def test_models_commands_through_redis(tmp_path: Path, client: Any,
                                       signed: tuple[Path, Path]) -> None:
    from click.testing import CliRunner
    from nearwatch.worker.cli import main

    env = {"NEARWATCH_MODEL_DIR": URL, "NEARWATCH_BUNDLE_KEY": KEY.decode()}
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(main, ["models", *args], env=env)

    result = run("list")
    assert result.exit_code == 0 and f"no models in {URL}" in result.output
    result = run("add", str(signed[0]), "--promote")
    assert result.exit_code == 0, result.output
    assert f"added v0001 (current) to {URL}" in result.output
    assert run("add", str(signed[1]), "--promote").exit_code == 0
    result = run("list")
    assert result.output.splitlines()[0].startswith("  v0001") and "* v0002" in result.output
    result = run("promote", "v0001")
    assert result.exit_code == 0 and "v0001 is the current model" in result.output
    facts = json.loads(run("show").output)
    assert facts["version"] == "v0001" and facts["model_version"] == _model(signed[0])
    store = RedisModelStore(client, KEY)
    _flip_chunk(client, store, "v0002", "manifest.json")
    result = run("promote", "v0002")
    assert result.exit_code == 1
    assert "refused v0002" in result.output
    assert "checksum mismatch for manifest.json" in result.output
    assert store.current_version() == "v0001"
    result = run("add", str(tmp_path))
    assert result.exit_code == 1 and "refused" in result.output

