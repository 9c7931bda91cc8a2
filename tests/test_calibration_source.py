"""Judge-calibration pairs from their published source: pinned sha256s, the store cache, a real
HTTP download from a local server (no network), local copies, and the uncalibrated message.

Run: python -m pytest -q tests/test_calibration_source.py -p no:cacheprovider
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
from pathlib import Path
from urllib.error import URLError

import pytest
from omegaconf import OmegaConf

from pipeline.cluster.downloads import config_items
from pipeline.cluster.fetchers import fetcher_for
from pipeline.config.schema import CalibrationConfig
from pipeline.judging import calibration_source as cs
from pipeline.stages import judge_calibration as stage
from pipeline.store.store import Store
from tests.support.composed import composed

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "alpaca_eval_gpt4_annotations"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent")
PINNED = cs.load_sources()["alpaca_eval"]
CONTENT = {"a-model.json": b'[{"preference": 2.0}]', "b-model.json": b'[{"preference": 1.0}]'}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Server:
    """A real HTTP server on 127.0.0.1 serving `files` (repo path -> bytes), counting requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests.append(self.path)
                body = outer.files.get(self.path.lstrip("/"))
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(monkeypatch):
    """A published source `test@<commit>` of two small files, served over real HTTP; the spec
    file is swapped for it and the offline switch (set by conftest) is lifted."""
    spec = cs.Published(
        "test",
        "org/repo",
        "c" * 40,
        "",
        tuple(
            cs.PublishedFile(name, f"results/{name}", _sha(data)) for name, data in CONTENT.items()
        ),
    )
    server = _Server({f"org/repo/{spec.commit}/results/{n}": d for n, d in CONTENT.items()})
    spec = dataclasses.replace(spec, url_template=server.url + "/{repo}/{commit}/{path}")
    monkeypatch.setattr(cs, "load_sources", lambda path=None: {"test": spec})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield spec, server
    server.close()


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise URLError("network is off in this test")

    monkeypatch.setattr(cs, "urlopen", refuse)


@needs_shared
def test_spec_pins_the_local_copies():
    """The shipped spec names the four files of ../shared/data with their sha256, at one commit."""
    local = {p.name: cs.sha256_of(p) for p in sorted(SHARED.glob("*.json"))}
    assert {f.name: f.sha256 for f in PINNED.files} == local and len(local) == 4
    assert len(PINNED.commit) == 40
    assert PINNED.url(PINNED.files[0]) == (
        "https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/"
        f"{PINNED.commit}/results/falcon-7b-instruct/alpaca_eval_gpt4/annotations.json"
    )
    assert CalibrationConfig().pairs == PINNED.source  # the default: the published set
    with pytest.raises(ValueError, match=PINNED.commit):
        cs.published("alpaca_eval@" + "0" * 40)  # an unpinned commit has no known sha256


def test_download_lands_in_cache_atomically_then_is_reused(served, tmp_path, monkeypatch):
    spec, server = served
    files = cs.resolve("test@" + spec.commit, tmp_path)
    folder = spec.cache_dir(tmp_path)
    assert files == [folder / "a-model.json", folder / "b-model.json"]
    assert [f.read_bytes() for f in files] == list(CONTENT.values())
    assert sorted(p.name for p in folder.iterdir()) == ["a-model.json", "b-model.json"]  # no temp
    assert len(server.requests) == 2
    _no_network(monkeypatch)  # the cached copy is used: not one request more
    assert cs.resolve("test", tmp_path) == files and len(server.requests) == 2


def test_bad_cached_copy_is_fetched_again(served, tmp_path):
    spec, server = served
    folder = spec.cache_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "a-model.json").write_bytes(CONTENT["a-model.json"])
    (folder / "b-model.json").write_bytes(b"[]")  # truncated or tampered with
    files = cs.resolve("test", tmp_path)
    assert files[1].read_bytes() == CONTENT["b-model.json"]
    assert server.requests == [f"/org/repo/{spec.commit}/results/b-model.json"]


def test_sha256_mismatch_is_refused_and_not_kept(served, tmp_path):
    spec, server = served
    server.files[f"org/repo/{spec.commit}/results/b-model.json"] = b"[] "
    with pytest.raises(cs.ChecksumError) as err:
        cs.resolve("test", tmp_path)
    text = str(err.value)
    assert "b-model.json" in text and _sha(b"[] ") in text
    assert _sha(CONTENT["b-model.json"]) in text
    assert sorted(p.name for p in spec.cache_dir(tmp_path).iterdir()) == ["a-model.json"]


def test_local_path_used_as_is(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    for name, data in CONTENT.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "notes.txt").write_text("not an annotation file")
    assert cs.resolve(str(tmp_path), tmp_path / "cache") == [tmp_path / n for n in CONTENT]
    one = tmp_path / "b-model.json"
    assert cs.resolve(str(one), tmp_path / "cache") == [one]
    with pytest.raises(cs.CalibrationUnavailable, match="no annotation file"):
        cs.resolve("", tmp_path / "cache")  # never the working directory's *.json


def _cfg(pairs, cache: Path):
    return OmegaConf.create(
        {"calibration": {"enabled": True, "pairs": str(pairs)}, "paths": {"cache": str(cache)}}
    )


def _fresh_clone(monkeypatch):
    """As in a clone without ../shared beside it: the pinned set has no local copy."""
    spec = dataclasses.replace(PINNED, local_copies=())
    monkeypatch.setattr(cs, "load_sources", lambda path=None: {"alpaca_eval": spec})


def test_no_data_no_network_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    """The run goes on uncalibrated, and says how to get the pairs: offline (HF_HUB_OFFLINE),
    a failed download, or a local path that is not there."""
    _fresh_clone(monkeypatch)
    assert stage.enabled(_cfg(PINNED.source, tmp_path)) is False  # conftest: HF_HUB_OFFLINE=1
    out = capsys.readouterr().out
    assert "UNCALIBRATED" in out and "HF_HUB_OFFLINE" in out
    assert "`python -m pipeline.prefetch`" in out and "calibration.pairs=PATH" in out

    monkeypatch.delenv("HF_HUB_OFFLINE")
    _no_network(monkeypatch)
    assert stage.enabled(_cfg(PINNED.source, tmp_path)) is False
    out = capsys.readouterr().out
    assert "UNCALIBRATED" in out and "network is off in this test" in out
    assert not list(PINNED.cache_dir(tmp_path).glob("*"))  # nothing half-written

    assert stage.enabled(_cfg(tmp_path / "absent", tmp_path)) is False
    out = capsys.readouterr().out
    assert f"calibration.pairs={PINNED.source}" in out and "pipeline.prefetch" in out
    assert cs.how_to_get(PINNED.source, ["experiment=paper_all", "judge=gpt4"]).startswith(
        "get them with `python -m pipeline.prefetch experiment=paper_all judge=gpt4`"
    )


@needs_shared
def test_stage_key_is_the_content_not_the_path(tmp_path, monkeypatch):
    """The published set from the cache and its local copy in ../shared/data give one key."""
    folder = PINNED.cache_dir(tmp_path / "cache")
    folder.mkdir(parents=True)
    for p in SHARED.glob("*.json"):
        (folder / p.name).write_bytes(p.read_bytes())
    keys = []
    monkeypatch.setattr(Store, "materialize", lambda self, key, *a, **k: keys.append(key))
    _no_network(monkeypatch)
    cfg = composed("calibration.n_pairs=40")
    store, cache = Store(tmp_path / "store"), Store(tmp_path / "cache")
    for pairs in (PINNED.source, str(SHARED)):
        stage.judge_calibration(
            cfg.judge, OmegaConf.merge(cfg.calibration, {"pairs": pairs}), store, cache
        )
    assert len(keys) == 2 and keys[0] == keys[1]


def test_prefetch_lists_the_published_pairs(served, tmp_path):
    """Prefetch needs the calibration item when the run would download it, and fetches it into
    the cache the run reads; a local path stays a checked file."""
    spec, server = served
    cache = tmp_path / "cache"
    cfg = composed(f"paths.cache={cache}", "calibration.pairs=test")
    item = next(i for i in config_items(cfg) if i.kind == "calibration")
    assert (item.id, item.name, item.optional) == ("test", str(cache), True)
    fetcher = fetcher_for("calibration", None)
    assert fetcher.where(item) == spec.cache_dir(cache) and not fetcher.present(item)
    fetcher.fetch(item)
    assert fetcher.present(item) and len(server.requests) == 2
    local = composed(f"calibration.pairs={tmp_path}")
    assert [i.kind for i in config_items(local) if i.id == str(tmp_path)] == ["file"]
    off = composed("calibration.enabled=false")
    assert not [i for i in config_items(off) if i.kind == "calibration"]


def test_check_says_published_pairs_will_be_downloaded(tmp_path, capsys, monkeypatch):
    """Before any work: a published set not yet cached is named, with where it comes from and
    the prefetch command for runs without internet; a known name at another commit fails."""
    _fresh_clone(monkeypatch)
    cfg = composed(f"paths.cache={tmp_path}", f"calibration.pairs={PINNED.source}")
    stage.check(cfg)
    out = capsys.readouterr().out
    assert f"{PINNED.source} is not in {PINNED.cache_dir(tmp_path)}" in out
    assert "downloaded from tatsu-lab/alpaca_eval" in out and "pipeline.prefetch" in out
    with pytest.raises(ValueError, match="other commits have no known checksum"):
        stage.check(composed("calibration.pairs=alpaca_eval@" + "1" * 40))


def test_the_default_calibrates_from_a_local_copy_without_any_flag(served, tmp_path, monkeypatch):
    """The default names the published set, not a folder a clone lacks; a copy with the pinned
    sha256s (../shared/data beside a checkout) is taken into the cache before any download."""
    assert composed().calibration.pairs == PINNED.source  # no experiment file overrides it
    assert composed("experiment=default_all").calibration.pairs == PINNED.source
    spec, server = served
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in CONTENT.items():
        (copy / name).write_bytes(data)
    (copy / "a-model.json").write_bytes(b"[]")  # one file differs: this copy is not the set
    other = tmp_path / "other"
    other.mkdir()
    for name, data in CONTENT.items():
        (other / name).write_bytes(data)
    spec = dataclasses.replace(spec, local_copies=(str(copy), str(other)))
    monkeypatch.setattr(cs, "load_sources", lambda path=None: {"test": spec})
    _no_network(monkeypatch)
    cfg = _cfg("test", tmp_path / "cache")
    assert stage.enabled(cfg) is True and server.requests == []
    files = cs.resolve("test", tmp_path / "cache")
    assert [f.parent for f in files] == [spec.cache_dir(tmp_path / "cache")] * 2
    assert [f.read_bytes() for f in files] == list(CONTENT.values())


def test_a_fresh_clone_with_network_downloads_the_pairs_without_any_flag(
    served, tmp_path, monkeypatch
):
    """No local copy, a reachable source: the judge is calibrated from the download."""
    spec, server = served
    monkeypatch.setattr(
        cs, "load_sources", lambda path=None: {"test": dataclasses.replace(spec, local_copies=())}
    )
    assert stage.enabled(_cfg("test", tmp_path / "cache")) is True
    assert len(server.requests) == len(CONTENT)


@needs_shared
def test_the_shipped_spec_finds_the_copy_beside_the_checkout(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    files = cs.resolve(PINNED.source, tmp_path / "cache")
    assert [f.name for f in files] == sorted(f.name for f in PINNED.files)
    assert all(f.parent == PINNED.cache_dir(tmp_path / "cache") for f in files)
