"""No credential in any output: terminal, ``fetch.log``, manifest, chip tags, cache names.

Each failure path of each source is driven with recognisable secrets (an Earth Engine API key
in the environment, tokens and signatures in a URL's query, a password in a URL) against
loopback servers, and every byte the run left behind is searched for them.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest
from tests.helpers.cli import run_cli
from tests.helpers.ee_emulator import serve_earthengine
from tests.helpers.loopback import QuietHandler, serve, serve_files
from tests.sources.test_earthengine_fetch import CLI, ROME, environment, write_grid

from m3leo_tiles.core.errors import first_line
from m3leo_tiles.core.redact import RedactingFilter, redact
from m3leo_tiles.core.retry import RetryPolicy
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, read_manifest
from m3leo_tiles.fetch.worker import reason_of
from m3leo_tiles.sources.download import cache_name, cached_download

EE_KEY = "SECRETKEY123"
TOKEN, SIGNATURE, CREDENTIAL, PASSWORD = "SECRETTOK99", "SECRETSIG77", "SECRETCRED55", "SECRETPW33"
SECRETS = (EE_KEY, TOKEN, SIGNATURE, CREDENTIAL, PASSWORD)
SIGNED_QUERY = f"token={TOKEN}&X-Amz-Signature={SIGNATURE}&X-Amz-Credential={CREDENTIAL}"


def closed_port_url() -> str:
    """A loopback URL where nothing listens (bound, then closed: refused at once)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def assert_no_secret(*texts: str, folders: tuple[Path, ...] = ()) -> None:
    """No secret in ``texts``, nor in the names or bytes of any file under ``folders`` (chip
    tags are plain ASCII in a TIFF's header: a byte search finds them)."""
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, text
    for folder in folders:
        for path in folder.rglob("*"):
            for secret in SECRETS:
                assert secret not in str(path.relative_to(folder)), path
                if path.is_file():
                    assert secret.encode() not in path.read_bytes(), path


# --- redact: every form ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET https://h/v1/x:computePixels?key=ABCDEF123&alt=json returned 500",
         "GET https://h/v1/x:computePixels?key=***&alt=json returned 500"),
        ("/p/x.tif?token=abc.def-1&a=1", "/p/x.tif?token=***&a=1"),
        ("url?access_token=ya29.xyz", "url?access_token=***"),
        ("u?X-Amz-Credential=AKIA%2F2020&X-Amz-Signature=ff00aa&X-Amz-Date=1",
         "u?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Date=1"),
        ("mirror https://anna:hunter22@host.org/a/b down",
         "mirror https://anna:***@host.org/a/b down"),
        ("root https:/anna:pw@h/x is not a folder", "root https:/anna:***@h/x is not a folder"),
        ("Authorization: Bearer eyJhbGci.x.y", "Authorization: Bearer ***"),
        ("headers {'Authorization': 'Basic dXNlcjpw'}", "headers {'Authorization': 'Basic ***'}"),
        ("api_key=k1k2k3 and apikey=k4k5", "api_key=*** and apikey=***"),
        ("no secret here: recipe_hash=abc, monkey business", "no secret here: recipe_hash=abc, "
         "monkey business"),
    ],
)  # fmt: skip
def test_redact_masks_each_form_and_keeps_the_rest(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected  # idempotent: a redacted text passes through again


def test_redact_masks_credential_environment_values_anywhere(monkeypatch) -> None:
    monkeypatch.setenv("M3LEO_EE_API_KEY", EE_KEY)
    monkeypatch.setenv("EARTHDATA_PASSWORD", PASSWORD)
    assert (
        redact(f"the key {EE_KEY} was refused for {PASSWORD}") == "the key *** was refused for ***"
    )


def test_every_place_an_error_becomes_text_redacts(caplog) -> None:
    error = RuntimeError(f"GET http://h/x?key={EE_KEY} failed\nsecond line")
    assert first_line(error) == "GET http://h/x?key=*** failed"
    assert reason_of(error) == "RuntimeError: GET http://h/x?key=*** failed"
    record = logging.LogRecord("m3leo_tiles", logging.ERROR, __file__, 1, "failed: %s",
                               (f"https://u:{PASSWORD}@h/x",), None)  # fmt: skip
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "failed: https://u:***@h/x"


# --- Earth Engine -------------------------------------------------------------------------------


def test_ee_unreachable_endpoint_error_line_has_no_key(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "tiles.geojson", ROME)
    env = environment(None, M3LEO_EE_API_KEY=EE_KEY, EE_PROJECT="m3leo-test")
    result = subprocess.run([str(CLI), "fetch", "srtm", "--grid", str(grid), "--out", "data",
                             "--ee-url", closed_port_url(), "--quiet"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "key=***" in result.stderr  # the request is still named, its key is not
    assert_no_secret(result.stdout, result.stderr, folders=(tmp_path,))


@pytest.mark.slow
def test_ee_service_going_away_mid_run_leaves_no_key(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "tiles.geojson", ROME)
    with serve_earthengine(latency_s=0.5) as server:
        env = environment(server, M3LEO_EE_API_KEY=EE_KEY, M3LEO_TEST_EE_ATTEMPTS="2")
        process = subprocess.Popen([str(CLI), "fetch", "srtm", "--grid", str(grid), "--out",
                                    "data", "--workers", "1", "--ee-concurrency", "1"],
                                   cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 90
        while not server.pixel_requests() and process.poll() is None:
            assert time.monotonic() < deadline, "no pixel request came"
            time.sleep(0.05)
        server.go_away()  # the request in flight gets no answer, its retry is refused
    try:
        out, err = process.communicate(timeout=180)
    finally:
        process.kill()
    folder = tmp_path / "data/rome/srtm"
    rows = read_manifest(folder / MANIFEST_NAME)
    assert process.returncode != 0 and any(row.reason for row in rows.values()), err
    assert_no_secret(out, err, folders=(tmp_path,))


# --- a download source (the shared cache) and a raster source over HTTP ------------------------


class StatusHandler(QuietHandler):
    def do_GET(self) -> None:
        self._accounted("GET", lambda: self.send_bytes(self.server.status, b"no"))  # type: ignore[attr-defined]

    do_HEAD = do_GET


@pytest.mark.parametrize("status", [404, 401, 500])
def test_download_failures_name_no_credential(tmp_path: Path, status: int) -> None:
    cache = tmp_path / "cache"
    with serve(StatusHandler, status=status) as server:
        for url in (f"{server.url}/p/granule.nc?{SIGNED_QUERY}",
                    server.url.replace("//", f"//anna:{PASSWORD}@") + "/p/granule.nc"):  # fmt: skip
            with pytest.raises(Exception) as caught:
                cached_download(url, cache, policy=RetryPolicy(attempts=1))
            assert "127.0.0.1" in reason_of(caught.value)
            assert_no_secret(reason_of(caught.value))
    assert_no_secret(folders=(cache,))


def test_unreachable_download_host_names_no_password(tmp_path: Path) -> None:
    url = closed_port_url().replace("//", f"//anna:{PASSWORD}@") + "/p/granule.nc"
    with pytest.raises(Exception) as caught:
        cached_download(url, tmp_path / "cache", policy=RetryPolicy(attempts=1))
    assert "127.0.0.1" in str(caught.value)
    assert_no_secret(str(caught.value))  # the message itself, before any redaction


def test_a_signed_urls_query_never_names_a_cache_file(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (bucket / "granule.nc").write_bytes(b"x" * 100)
    assert cache_name(f"https://b.s3.amazonaws.com/granule.nc?{SIGNED_QUERY}") == "granule.nc"
    with serve_files(bucket) as server:
        path = cached_download(f"{server.url}/granule.nc?{SIGNED_QUERY}", tmp_path / "cache",
                               expected_size=100)  # fmt: skip
    assert path.name == "granule.nc"
    assert_no_secret(folders=(tmp_path / "cache",))


@pytest.mark.slow
def test_raster_over_http_with_a_signed_url(tmp_path: Path, shared_data: Path) -> None:
    """Failing (500s) then working: the manifest's inputs, fetch.log, chip tags and the
    terminal name the URL without its credentials, and the rerun still finds its chips done
    (the redacted inputs compare equal)."""
    grid = write_grid(tmp_path / "tiles.geojson", ROME)
    with serve(StatusHandler, status=500) as server:
        failing = run_cli(["fetch", "demo-dem", "--grid", grid, "--out", "data", "--source",
                           f"{server.url}/Rome-30m-DEM.tif?{SIGNED_QUERY}", "--workers", "1"],
                          cwd=tmp_path)  # fmt: skip
    assert failing.returncode in (1, 2), failing.stderr
    assert_no_secret(failing.stdout, failing.stderr, folders=(tmp_path / "data",))
    with serve_files(shared_data / "dem") as server:
        args = [
            "fetch",
            "demo-dem",
            "--grid",
            grid,
            "--out",
            "data",
            "--source",
            f"{server.url}/Rome-30m-DEM.tif?{SIGNED_QUERY}",
            "--workers",
            "1",
        ]
        first = run_cli(args, cwd=tmp_path)
        again = run_cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert again.returncode == 0 and f"{len(ROME)} already done" in again.stdout, again.stdout
    rows = read_manifest(tmp_path / "data/rome/demo-dem" / MANIFEST_NAME)
    assert all("token=***" in row.inputs[0] for row in rows.values())
    assert_no_secret(first.stdout, first.stderr, again.stdout, again.stderr,
                     folders=(tmp_path / "data",))  # fmt: skip


# --- m3leo-train -------------------------------------------------------------------------------


def test_train_error_line_names_no_credential(tmp_path: Path, capsys) -> None:
    from m3leo_tiles.ml.train import main

    root = f"https://anna:{PASSWORD}@host/data?token={TOKEN}"
    grid = write_grid(tmp_path / "tiles.geojson", ROME)
    args = ["--task", "esawc", "--root", root, "--grid", grid, "--out", tmp_path / "run"]
    with pytest.raises(SystemExit) as done:
        main([*map(str, args), "--quiet"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith("error: data root"), err
    assert_no_secret(err)
