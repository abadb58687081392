"""deploy/go_toolchain.py, the Dockerfile's Go toolchain fetcher, against a local module
proxy serving a small toolchain-shaped zip (the real one, ~70 MB, is fetched and checked
against the Dockerfile's pinned h1 by the image build in tests/integration/test_container.py).
"""

from __future__ import annotations

import importlib.util
import io
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION, ARCH = "go1.99.1", "amd64"
PREFIX = f"golang.org/toolchain@v0.0.1-{VERSION}.linux-{ARCH}/"
FILES = {"bin/go": b"#!/bin/sh\necho go\n", "pkg/tool/linux_amd64/compile": b"\x7fELF",
         "src/fmt/print.go": b"package fmt\n", "VERSION": VERSION.encode()}


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("go_toolchain", ROOT / "deploy" /
                                                  "go_toolchain.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def toolchain_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zipped:
        for name, data in FILES.items():
            zipped.writestr(PREFIX + name, data)
    return out.getvalue()


@pytest.fixture()
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A module proxy on 127.0.0.1 serving the zip; yields the paths it was asked for."""
    body, asked = toolchain_zip(), []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            found = self.path == f"/golang.org/toolchain/@v/v0.0.1-{VERSION}.linux-{ARCH}.zip"
            self.send_response(200 if found else 404)
            self.end_headers()
            self.wfile.write(body if found else b"not found")

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("GOPROXY", f"off|http://127.0.0.1:{server.server_port}/,direct")
    try:
        yield asked
    finally:
        server.shutdown()
        server.server_close()


def test_fetches_checks_unpacks_and_reuses_the_cached_zip(proxy: list[str],
                                                         tmp_path: Path) -> None:
    tool = load()
    expected = tool.h1(_written(tmp_path / "made.zip"))
    tool.main([VERSION, ARCH, expected, str(tmp_path / "cache"), str(tmp_path / "go")])
    for name, data in FILES.items():
        assert (tmp_path / "go" / name).read_bytes() == data
    assert (tmp_path / "go" / "bin/go").stat().st_mode & 0o111
    assert (tmp_path / "go" / "pkg/tool/linux_amd64/compile").stat().st_mode & 0o111
    assert not (tmp_path / "go" / "src/fmt/print.go").stat().st_mode & 0o111
    assert len(proxy) == 1
    tool.main([VERSION, ARCH, expected, str(tmp_path / "cache"), str(tmp_path / "again")])
    assert len(proxy) == 1  # the cached zip was checked and used, nothing downloaded


def test_a_zip_with_another_checksum_is_refused_and_not_kept(proxy: list[str],
                                                            tmp_path: Path) -> None:
    tool = load()
    wrong = "h1:" + "A" * 43 + "="
    with pytest.raises(SystemExit) as refused:
        tool.main([VERSION, ARCH, wrong, str(tmp_path / "cache"), str(tmp_path / "go")])
    message = str(refused.value)
    assert "\n" not in message and message.endswith(f"expected {wrong}")
    assert "has checksum h1:" in message
    assert not list((tmp_path / "cache").iterdir())
    assert not (tmp_path / "go").exists()


def test_h1_is_independent_of_the_zip_order(tmp_path: Path) -> None:
    tool = load()
    forward, backward = tmp_path / "a.zip", tmp_path / "b.zip"
    _written(forward)
    with zipfile.ZipFile(backward, "w") as zipped:
        for name, data in reversed(FILES.items()):
            zipped.writestr(PREFIX + name, data)
    assert tool.h1(forward) == tool.h1(backward)
    assert tool.h1(forward).startswith("h1:") and len(tool.h1(forward)) == 47


def _written(path: Path) -> Path:
    path.write_bytes(toolchain_zip())
    return path
