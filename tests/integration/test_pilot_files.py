"""The pilot's side of hostile input: job directories it makes fresh, files it opens without
following symlinks, input URLs checked (and their redirects), output it reads from its own
descriptors. Real files, real processes, a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator

import pytest

from pilot.runner import JobRun
from pilot.sandbox import Sandbox
from pilot.urls import UrlRefused, check_url, open_url


def run_of(tmp_path, **job) -> JobRun:
    (tmp_path / "work").mkdir(exist_ok=True)
    spec = {"id": 7, "executable": "/bin/sh", "arguments": ["-c", "true"],
            "requirements": {"cores": 1, "memory_mb": 64, "max_runtime": 30}, **job}
    return JobRun(spec, "cp_jobtoken", tmp_path / "work", "http://127.0.0.1:9",
                  sandbox=Sandbox("none"))


def test_a_planted_job_directory_is_refused_and_left_alone(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    run = run_of(tmp_path, inputs=[{"name": "in.txt", "content": "x"}])
    (tmp_path / "work" / "job-7").symlink_to(victim)
    with pytest.raises(FileExistsError, match="exists already"):
        run.prepare()
    run.cleanup()
    assert list(victim.iterdir()) == [] and (tmp_path / "work" / "job-7").is_symlink()


def test_the_payload_cannot_redirect_the_pilots_reads(tmp_path):
    secret = tmp_path / "pilot-token"
    secret.write_text("cp_secret")
    run = run_of(tmp_path, arguments=["-c", f"echo out; ln -sf {secret} .progress; "
                                      f"rm .stdout; ln -s {secret} .stdout"])
    run.prepare()
    run.start()
    assert run.wait().status == "done"
    assert run.progress() is None  # a symlink is not followed
    out, err, truncated = run.output(1000)
    assert out == "out\n" and "cp_secret" not in out + err and not truncated
    run.cleanup()
    assert not (tmp_path / "work" / "job-7").exists() and secret.read_text() == "cp_secret"


def test_bad_base64_is_a_clear_error(tmp_path):
    run = run_of(tmp_path, inputs=[{"name": "a", "content_b64": "***"}])
    with pytest.raises(ValueError, match="invalid base64"):
        run.prepare()
    run.cleanup()


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://example.org/x", "http://169.254.169.254/latest/user-data",
    "http://[fd00:ec2::254]/", "http://127.0.0.1/", "http://localhost/", "http://0.0.0.0/",
    "http://10.0.0.1/", "http://[::ffff:127.0.0.1]/", "http://metadata.google.internal/",
    "http://user:pw@example.org/", "http://example.org:99999/"])
def test_urls_refused_by_default(url):
    with pytest.raises(UrlRefused):
        check_url(url)


def test_allowed_and_resolved_urls():
    assert check_url("https://example.org/data") == "https://example.org/data"
    assert check_url("http://127.0.0.1:8/x", ["127.0.0.1/32"])
    with pytest.raises(UrlRefused, match="loopback"):  # a name resolving to loopback
        check_url("http://files.example/x", resolve=lambda h: ["127.0.0.1"])


@pytest.fixture
def redirecting() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/ok":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"fine")
                return
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/user-data"
                             if self.path == "/meta" else "/ok")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_redirects_are_checked_again(redirecting):
    allow = ["127.0.0.1/32"]
    with open_url(redirecting + "/elsewhere", allow, timeout=5) as r:
        assert r.read() == b"fine"
    with pytest.raises(UrlRefused, match=r"169\.254\.169\.254"):
        open_url(redirecting + "/meta", allow, timeout=5)


class FlippingResolver:
    """A fake resolver, named as such (a real DNS server that rebinds cannot run here): its
    first answer is the allowed address, every later one the forbidden address, as a
    rebinding name server's short-lived answers do."""

    def __init__(self, first: str, then: str) -> None:
        self.first, self.then, self.calls = first, then, 0

    def __call__(self, host: str) -> list[str]:
        assert host == "inputs.example"
        self.calls += 1
        return [self.first if self.calls == 1 else self.then]


@pytest.fixture
def two_addresses(tmp_path) -> Iterator[tuple[int, dict[str, list[str]], ssl.SSLContext]]:
    """The same port on 127.0.0.2 (allowed: serves the input, over TLS as inputs.example)
    and on 127.0.0.3 (forbidden: records every request that reaches it)."""
    hits: dict[str, list[str]] = {"127.0.0.2": [], "127.0.0.3": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            here = self.server.server_address[0]
            hits[here].append(self.headers.get("Host", ""))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(f"from {here}".encode())

        def log_message(self, *args: object) -> None:
            pass

    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=inputs.example", "-addext", "subjectAltName=DNS:inputs.example",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=30)
    good = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    port = good.server_address[1]
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    good.socket = tls.wrap_socket(good.socket, server_side=True)
    bad = http.server.ThreadingHTTPServer(("127.0.0.3", port), Handler)
    servers = [good, bad]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield port, hits, ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_an_input_url_is_fetched_from_the_address_that_was_checked(two_addresses):
    """DNS rebinding: the name resolves to an allowed address at the check and to a
    forbidden one right after. The pilot resolves once and connects to the address it
    checked, with the original name in the Host header and TLS (the certificate is for
    inputs.example, not for an address); the next fetch, resolved to the forbidden address,
    is refused before any connection. Traffic only to 127.0.0.2 and 127.0.0.3."""
    port, hits, client_tls = two_addresses
    url, allow = f"https://inputs.example:{port}/data", ["127.0.0.2/32"]
    resolver = FlippingResolver("127.0.0.2", "127.0.0.3")
    with open_url(url, allow, timeout=5, resolve=resolver, context=client_tls) as r:
        assert r.read() == b"from 127.0.0.2"
    assert resolver.calls == 1 and hits["127.0.0.2"] == [f"inputs.example:{port}"]
    with pytest.raises(UrlRefused, match=r"127\.0\.0\.3"):
        open_url(url, allow, timeout=5, resolve=resolver, context=client_tls)
    with pytest.raises(UrlRefused, match=r"127\.0\.0\.3"):
        open_url(f"http://inputs.example:{port}/data", allow, timeout=5, resolve=resolver)
    assert hits["127.0.0.3"] == [] and resolver.calls == 3


def test_sandbox_hides_what_it_is_told(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "inner").mkdir()
    (tmp_path / "db").write_text("x")
    box = Sandbox("bwrap", hide=(str(tmp_path / "db"), str(tmp_path / "missing")))
    dirs, files = box.hidden((str(tmp_path / "cfg"), str(tmp_path / "cfg" / "inner")))
    assert dirs == [str(tmp_path / "cfg")] and files == [str(tmp_path / "db")]
    cmd = box.command(["/bin/true"], tmp_path)
    assert cmd[:3] == ["bwrap", "--ro-bind", "/"] and cmd[-2:] == ["--", "/bin/true"]
    assert Sandbox("none").command(["/bin/true"], tmp_path) == ["/bin/true"]


@pytest.mark.skipif(os.geteuid() != 0, reason="user isolation needs a pilot running as root")
def test_user_isolation_runs_the_payload_as_the_payload_user(tmp_path):
    secret = tmp_path / "pilot.json"
    secret.write_text("cp_secret")
    secret.chmod(0o600)
    tmp_path.chmod(0o711)
    spec = {"id": 8, "executable": "/bin/sh",
            "arguments": ["-c", f"id -un; cat {secret} || echo refused; echo hi > mine"],
            "requirements": {"cores": 1, "memory_mb": 64, "max_runtime": 30}}
    (tmp_path / "work").mkdir(mode=0o711)
    run = JobRun(spec, "cp_jobtoken", tmp_path / "work", "http://127.0.0.1:9",
                 sandbox=Sandbox("user", payload_user="nobody"))
    run.sandbox.check()
    run.prepare()
    run.start()
    assert run.wait().status == "done"
    out, err, _ = run.output(1000)
    assert out.split() == ["nobody", "refused"] and "Permission denied" in err
    assert (run.dir / "mine").stat().st_uid == run.sandbox.popen_options()["user"]
    run.cleanup()


def test_a_stop_that_comes_while_the_payload_starts_still_stops_it(tmp_path):
    # SIGTERM reached the pilot after the job was handed over but before its process
    # existed: the payload must be stopped at once, not left to finish on a pilot going away
    run = run_of(tmp_path, arguments=["-c", "sleep 8; echo finished"])
    run.lease_until = float("inf")
    run.prepare()
    run.stop("interrupted")
    run.start()
    outcome = run.wait()
    out, _, _ = run.output(1000)
    run.cleanup()
    assert outcome.status == "interrupted" and "finished" not in out


def test_each_attempt_has_its_own_directory(tmp_path):
    """Issue 26 (bench.chaos): an attempt's directory left behind by a pilot killed or frozen
    on this machine does not fail the job's next attempt here ("exists already")."""
    first = run_of(tmp_path, attempt=1)
    first.prepare()  # and never cleaned up: its pilot was killed
    second = run_of(tmp_path, attempt=2)
    second.prepare()
    second.start()
    assert second.wait().status == "done"
    assert {p.name for p in (tmp_path / "work").iterdir()} == {"job-7.1", "job-7.2"}
    second.cleanup()
    first.cleanup()
