"""Tests of hybridgl.weights against a local HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hybridgl import weights
from hybridgl.errors import WeightsError
from hybridgl.models import random_weights_mode
from hybridgl.weights import Checkpoint

PAYLOAD = b"fake checkpoint bytes " * 4096  # ~88 KiB: several read chunks on slow paths
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
FILENAME = "fake_ckpt.pth"


@dataclass
class Route:
    """What the fake server answers for one path."""

    body: bytes = PAYLOAD
    status: int = 200
    claimed_length: int | None = None  # Content-Length to announce; None: the real length
    delay: float = 0.0  # seconds to wait before answering


@dataclass
class FakeServer:
    base: str
    routes: dict[str, Route]
    hits: list[str] = field(default_factory=list)

    def url(self, name: str = FILENAME) -> str:
        return f"{self.base}/{name}"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    routes: dict[str, Route] = {"/" + FILENAME: Route()}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            hits.append(self.path)
            route = routes.get(self.path)
            if route is None:
                self.send_error(404, "not here")
                return
            if route.delay:
                time.sleep(route.delay)
            self.send_response(route.status)
            length = len(route.body) if route.claimed_length is None else route.claimed_length
            self.send_header("Content-Length", str(length))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            try:
                self.wfile.write(route.body)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up first (timeout and truncation tests): expected
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    host, port = httpd.server_address[:2]
    try:
        yield FakeServer(base=f"http://{host}:{port}", routes=routes, hits=hits)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every directory the module might use into tmp_path; clear our variables."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("HYBRIDGL_CACHE_DIR", str(cache))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in (
        "HYBRIDGL_WEIGHTS_DIR",
        "HYBRIDGL_OFFLINE",
        "HYBRIDGL_WEIGHTS_URL_BASE",
        "HYBRIDGL_RANDOM_WEIGHTS",
    ):
        monkeypatch.delenv(var, raising=False)
    # The fake server is local: never route it through a proxy from the environment.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return cache


def make_ckpt(url: str, sha256: str = PAYLOAD_SHA, size: int | None = len(PAYLOAD)) -> Checkpoint:
    return Checkpoint(
        name="fake",
        kind="sam",
        arch="vit_fake",
        url=url,
        filename=FILENAME,
        sha256=sha256,
        size=size,
    )


@pytest.fixture
def fake(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Checkpoint:
    ckpt = make_ckpt(server.url())
    monkeypatch.setitem(weights.REGISTRY, "fake", ckpt)
    return ckpt


def leftovers(directory: Path) -> list[str]:
    """Sorted names of everything in ``directory`` (empty if it does not exist)."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- registry


def test_registry_has_the_official_checkpoints() -> None:
    names = [c.name for c in weights.list_checkpoints() if not c.is_hub]
    assert names == [
        "sam_vit_h",
        "sam_vit_l",
        "sam_vit_b",
        "clip_vit_b16_openai",
        "clip_vit_l14_openai",
    ]
    h = weights.get_checkpoint("sam_vit_h")
    assert h.url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"
    assert h.filename == "sam_vit_h_4b8939.pth"
    assert h.size == 2564550879
    assert h.sha256 == "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"
    clip = weights.get_checkpoint("clip_vit_b16_openai")
    assert clip.kind == "clip" and clip.arch == "ViT-B-16"
    assert clip.filename == "ViT-B-16.pt"
    assert clip.sha256 in clip.url  # OpenAI's folder is the file's SHA-256
    for c in weights.list_checkpoints():
        if c.is_hub:  # Hugging Face Hub snapshots: a folder of files at a revision
            assert c.sha256 is None and c.hub_files and c.revision
            assert c.url == f"https://huggingface.co/{c.hub_repo}/tree/{c.revision}"
            continue
        assert c.url.endswith("/" + c.filename)
        assert c.sha256 is not None and len(c.sha256) == 64
        assert c.size is None or c.size > 0
    hf = weights.get_checkpoint("clip_vit_b16_openai_hf")
    assert (hf.kind, hf.arch, hf.hub_repo) == (
        "clip",
        "ViT-B-16",
        "timm/vit_base_patch16_clip_224.openai",
    )
    assert hf.hub_files == ("open_clip_model.safetensors",)


def test_get_checkpoint_unknown_lists_known_names() -> None:
    with pytest.raises(ValueError, match="Unknown checkpoint") as info:
        weights.get_checkpoint("sam_vit_x")
    for name in weights.REGISTRY:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("arch", "name"),
    [
        ("vit_h", "sam_vit_h"),
        ("vit_l", "sam_vit_l"),
        ("vit_b", "sam_vit_b"),
        ("VIT-B", "sam_vit_b"),
        ("default", "sam_vit_h"),
        ("sam_vit_l", "sam_vit_l"),
    ],
)
def test_sam_checkpoint_name(arch: str, name: str) -> None:
    assert weights.sam_checkpoint_name(arch) == name


@pytest.mark.parametrize("model", ["ViT-B-16", "ViT-B/16", "vit-b-16"])
def test_clip_checkpoint_name(model: str) -> None:
    assert weights.clip_checkpoint_name(model) == "clip_vit_b16_openai"


def test_unknown_architectures_raise() -> None:
    with pytest.raises(ValueError, match="vit_h"):
        weights.sam_checkpoint_name("vit_t")
    with pytest.raises(ValueError, match="ViT-B-16"):
        weights.clip_checkpoint_name("RN50")


def test_checkpoint_validates_fields() -> None:
    with pytest.raises(ValueError, match="kind"):
        Checkpoint("x", "dino", "a", "http://h/f", "f", PAYLOAD_SHA, None)
    with pytest.raises(ValueError, match="sha256"):
        Checkpoint("x", "sam", "a", "http://h/f", "f", "abc", None)


# ----------------------------------------------------------------------------- environment


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("  ", None), ("tiny", "tiny"), ("full", "full"), ("TINY", "tiny")],
)
def test_random_weights_mode(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: str | None
) -> None:
    if value is not None:
        monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", value)
    assert random_weights_mode() == expected


@pytest.mark.parametrize("value", ["1", "yes", "small", "random"])
def test_random_weights_mode_rejects_other_values(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", value)
    with pytest.raises(ValueError, match="HYBRIDGL_RANDOM_WEIGHTS"):
        random_weights_mode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, False), ("", False), ("0", False), ("no", False), ("1", True), ("true", True)]
    + [("YES", True), ("True", True)],
)
def test_offline(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool) -> None:
    if value is not None:
        monkeypatch.setenv("HYBRIDGL_OFFLINE", value)
    assert weights.offline() is expected


def test_cache_dir_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    assert weights.cache_dir() == isolated_env
    monkeypatch.delenv("HYBRIDGL_CACHE_DIR")
    assert weights.cache_dir() == tmp_path / "xdg" / "hybridgl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "hybridgl"


def test_search_dirs_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_a, env_b, explicit = tmp_path / "env_a", tmp_path / "env_b", tmp_path / "explicit"
    monkeypatch.setenv("HYBRIDGL_WEIGHTS_DIR", f"{env_a}{os.pathsep}{env_b}")
    assert weights.search_dirs(explicit) == [explicit, env_a, env_b, weights.cache_dir()]
    assert weights.search_dirs() == [env_a, env_b, weights.cache_dir()]
    # No duplicates when the same directory is named twice.
    assert weights.search_dirs(env_a) == [env_a, env_b, weights.cache_dir()]


# ----------------------------------------------------------------------------- download


def test_download_then_cache_reuse(
    fake: Checkpoint, server: FakeServer, isolated_env: Path
) -> None:
    path = weights.resolve("fake", progress=False)
    assert path == isolated_env / FILENAME
    assert path.read_bytes() == PAYLOAD
    assert weights.sha256_file(path) == PAYLOAD_SHA
    assert server.hits == ["/" + FILENAME]
    assert not [n for n in leftovers(isolated_env) if n.startswith(".")]  # no temporary file left

    assert weights.resolve("fake") == path
    assert weights.resolve("fake", verify=True) == path
    assert weights.find_local(fake) == path
    assert len(server.hits) == 1, "the cached file must be reused without HTTP requests"


def test_download_function_with_explicit_dest(fake: Checkpoint, tmp_path: Path) -> None:
    dest = tmp_path / "some" / "new" / "dir"
    path = weights.download(fake, dest_dir=dest, progress=True)  # no tty: bar stays off
    assert path == dest / FILENAME
    assert path.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    wrong = "0" * 64
    monkeypatch.setitem(weights.REGISTRY, "fake", make_ckpt(server.url(), sha256=wrong))
    with pytest.raises(WeightsError) as info:
        weights.resolve("fake", progress=False)
    message = str(info.value)
    assert wrong in message and PAYLOAD_SHA in message
    assert server.url() in message
    assert not (isolated_env / FILENAME).exists()
    assert leftovers(isolated_env) == []


def test_interrupted_transfer_leaves_nothing(
    fake: Checkpoint, server: FakeServer, isolated_env: Path
) -> None:
    server.routes["/" + FILENAME] = Route(body=PAYLOAD[:1000], claimed_length=len(PAYLOAD))
    with pytest.raises(WeightsError, match="interrupted|failed") as info:
        weights.resolve("fake", progress=False)
    assert server.url() in str(info.value)
    assert not (isolated_env / FILENAME).exists()
    assert leftovers(isolated_env) == []


def test_interrupted_download_keeps_existing_good_file(
    fake: Checkpoint, server: FakeServer, isolated_env: Path
) -> None:
    good = weights.download(fake, isolated_env, progress=False)
    server.routes["/" + FILENAME] = Route(body=PAYLOAD[:10], claimed_length=len(PAYLOAD))
    with pytest.raises(WeightsError):
        weights.download(fake, isolated_env, progress=False)
    assert good.read_bytes() == PAYLOAD
    assert not [n for n in leftovers(isolated_env) if n.startswith(".")]  # no temporary file left


def test_http_error_names_url_and_manual_steps(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    url = server.url("missing.pth")
    monkeypatch.setitem(weights.REGISTRY, "fake", make_ckpt(url))
    with pytest.raises(WeightsError, match="404") as info:
        weights.resolve("fake", progress=False)
    message = str(info.value)
    assert url in message and "manually" in message and str(isolated_env) in message
    assert leftovers(isolated_env) == []


def test_connection_refused_is_a_weights_error(
    monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}/{FILENAME}"
    monkeypatch.setitem(weights.REGISTRY, "fake", make_ckpt(url))
    with pytest.raises(WeightsError) as info:
        weights.resolve("fake", progress=False)
    assert url in str(info.value)
    assert leftovers(isolated_env) == []


def test_timeout_is_a_weights_error(fake: Checkpoint, server: FakeServer, tmp_path: Path) -> None:
    server.routes["/" + FILENAME] = Route(delay=2.0)
    with pytest.raises(WeightsError, match="timed out"):
        weights.download(fake, tmp_path / "dl", progress=False, timeout=0.3)
    assert leftovers(tmp_path / "dl") == []


def test_url_base_override(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    # The registry URL points nowhere; the mirror variable must win.
    dead = f"http://127.0.0.1:{free_port()}/elsewhere/{FILENAME}"
    monkeypatch.setitem(weights.REGISTRY, "fake", make_ckpt(dead))
    monkeypatch.setenv("HYBRIDGL_WEIGHTS_URL_BASE", server.base + "/")
    path = weights.resolve("fake", progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.hits == ["/" + FILENAME]


def test_explicit_url_argument(server: FakeServer, tmp_path: Path) -> None:
    ckpt = make_ckpt("http://127.0.0.1:9/never")
    path = weights.download(ckpt, tmp_path, progress=False, url=server.url())
    assert path.read_bytes() == PAYLOAD


def test_wrong_registry_size_but_matching_sha_is_accepted(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    ckpt = make_ckpt(server.url(), size=len(PAYLOAD) + 123)
    monkeypatch.setitem(weights.REGISTRY, "fake", ckpt)
    path = weights.resolve("fake", progress=False)
    assert path.read_bytes() == PAYLOAD
    # Found again locally: the size disagrees, the hash decides, no new download.
    assert weights.resolve("fake") == path
    assert len(server.hits) == 1


# ----------------------------------------------------------------------------- offline


def test_offline_error_names_file_url_and_dirs(
    fake: Checkpoint,
    server: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    isolated_env: Path,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")
    extra = tmp_path / "extra"
    with pytest.raises(WeightsError) as info:
        weights.resolve("fake", weights_dir=extra)
    message = str(info.value)
    assert FILENAME in message
    assert fake.url in message
    assert str(isolated_env) in message and str(extra) in message
    assert "HYBRIDGL_WEIGHTS_DIR" in message and "HYBRIDGL_OFFLINE" in message
    assert server.hits == []
    assert isinstance(info.value, FileNotFoundError)


def test_download_false_also_refuses(fake: Checkpoint, server: FakeServer) -> None:
    with pytest.raises(WeightsError, match="download=False"):
        weights.resolve("fake", download=False)
    assert server.hits == []


def test_download_true_overrides_offline(
    fake: Checkpoint, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "yes")
    assert weights.resolve("fake", download=True, progress=False).read_bytes() == PAYLOAD


def test_offline_with_corrupt_local_file_says_so(
    fake: Checkpoint, server: FakeServer, monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")
    isolated_env.mkdir(parents=True)
    (isolated_env / FILENAME).write_bytes(b"truncated")
    with pytest.raises(WeightsError, match="Rejected"):
        weights.resolve("fake")
    assert server.hits == []


# ----------------------------------------------------------------------------- local lookup


def test_explicit_path(fake: Checkpoint, server: FakeServer, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="nope.pth"):
        weights.resolve("fake", path=missing)
    present = tmp_path / "mine.pth"
    present.write_bytes(b"a fine-tuned checkpoint")
    assert weights.resolve("fake", path=present) == present
    assert weights.resolve("fake", path=str(present)) == present
    with pytest.raises(WeightsError, match="SHA-256"):
        weights.resolve("fake", path=present, verify=True)
    (tmp_path / FILENAME).write_bytes(PAYLOAD)
    assert weights.resolve("fake", path=tmp_path, verify=True) == tmp_path / FILENAME
    assert server.hits == []


def test_weights_dir_resolution_order(
    fake: Checkpoint,
    server: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    isolated_env: Path,
) -> None:
    env_dir, arg_dir = tmp_path / "env_weights", tmp_path / "arg_weights"
    for d in (env_dir, arg_dir, isolated_env):
        d.mkdir(parents=True)
        (d / FILENAME).write_bytes(PAYLOAD)

    assert weights.resolve("fake") == isolated_env / FILENAME
    monkeypatch.setenv("HYBRIDGL_WEIGHTS_DIR", str(env_dir))
    assert weights.resolve("fake") == env_dir / FILENAME
    assert weights.resolve("fake", weights_dir=arg_dir) == arg_dir / FILENAME
    assert weights.resolve("fake", weights_dir=str(arg_dir)) == arg_dir / FILENAME
    assert server.hits == []


def test_corrupt_candidate_is_skipped_with_verify(
    fake: Checkpoint, server: FakeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_dir = tmp_path / "env_weights"
    env_dir.mkdir()
    (env_dir / FILENAME).write_bytes(b"x" * len(PAYLOAD))  # right size, wrong bytes
    monkeypatch.setenv("HYBRIDGL_WEIGHTS_DIR", str(env_dir))
    assert weights.resolve("fake") == env_dir / FILENAME  # size looks fine: no hashing
    path = weights.resolve("fake", verify=True, progress=False)  # rejected: downloads
    assert path == weights.cache_dir() / FILENAME
    assert len(server.hits) == 1


def test_verify_marker_skips_rehash_until_file_changes(
    fake: Checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / FILENAME
    path.write_bytes(PAYLOAD)
    assert weights.verify_file(fake, path)
    assert (tmp_path / (FILENAME + ".sha256.json")).is_file()

    calls: list[object] = []
    real = weights.sha256_file

    def counting(p: str | Path) -> str:
        calls.append(p)
        return real(p)

    monkeypatch.setattr(weights.integrity, "sha256_file", counting)  # where verify_file looks it up
    assert weights.verify_file(fake, path)
    assert calls == [], "an unchanged, verified file must not be rehashed"

    path.write_bytes(b"y" * len(PAYLOAD))  # same size, new content
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert not weights.verify_file(fake, path)
    assert len(calls) == 1
    assert not weights.verify_file(fake, tmp_path / "absent.pth")


def test_offline_and_failed_download_give_the_same_hint(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    # one wording of "get it by hand": where from, the SHA-256, and where it is looked for
    url = server.url("missing.pth")
    ckpt = make_ckpt(url)
    monkeypatch.setitem(weights.REGISTRY, "fake", ckpt)
    with pytest.raises(WeightsError) as failed:
        weights.resolve("fake", progress=False)
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")
    with pytest.raises(WeightsError) as offline:
        weights.resolve("fake", progress=False)
    hint = (
        f"Download {ckpt.filename} manually from {url} (SHA-256 {ckpt.sha256}) and put it "
        f"in one of these directories, searched in this order:\n  - {isolated_env}\n"
    )
    assert hint in str(failed.value) and hint in str(offline.value)


def test_hub_download_is_all_or_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # files arrive one by one into a hidden folder (hybridgl.fileio.atomic_dir) that is
    # renamed into place only when every file is there
    import huggingface_hub

    ckpt = next(c for c in weights.REGISTRY.values() if c.is_hub and len(c.hub_files) > 1)
    calls: list[str] = []

    def fake_download(repo: str, filename: str, revision: str, local_dir: Path) -> str:
        calls.append(filename)
        if fail and len(calls) == len(ckpt.hub_files):
            raise ConnectionError("network down")
        out = Path(local_dir) / filename
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(filename)
        return str(out)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    fail = True
    with pytest.raises(WeightsError, match="network down"):
        weights.download_hub(ckpt, tmp_path, progress=False)
    assert leftovers(tmp_path) == []
    fail, calls = False, []
    final = weights.download_hub(ckpt, tmp_path, progress=False)
    assert final == tmp_path / ckpt.filename and leftovers(tmp_path) == [ckpt.filename]
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file()) == sorted(
        ckpt.hub_files
    )


def test_random_weights_switch_has_one_home() -> None:
    """The switch is read by ``hybridgl.models.random_weights_mode`` only; the transitional
    re-export from ``hybridgl.weights`` is gone (no second import path to keep in sync)."""
    import hybridgl.weights

    assert not hasattr(hybridgl.weights, "random_weights_mode")
