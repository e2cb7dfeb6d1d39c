"""The web config against a really started server: TLS, mTLS, TLS versions, basic auth,
rate limit, response headers; and every kind of bad file rejected with its field path."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import logging
import re
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

import exporter.webconfig as webconfig
from exporter.config import ConfigError
from exporter.selfmetrics import SelfMetrics
from exporter.server import build_app
from exporter.store import MetricsStore
from exporter.webconfig import WebConfig, load_web_config, parse_web_config
from tests.support import ROOT

HEALTH = frozenset({"/healthz", "/readyz"})
PASSWORD = "correct horse battery staple"
# Cost 4, bcrypt's minimum, keeps the tests fast; the code paths are the same at 10.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


@dataclass(frozen=True)
class PKI:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_key: Path  # a key that matches no certificate


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    sans: list[x509.GeneralName],
    path: Path,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made now."""
    d = tmp_path_factory.mktemp("pki")
    certs = d / "certs"
    certs.mkdir()
    ca_key = _key()
    ca = _cert("test CA", ca_key, None, ca_key, [], certs / "ca.crt")
    server_key = _key()
    _cert(
        "exporter",
        server_key,
        ca,
        ca_key,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        certs / "server.crt",
    )
    client_key = _key()
    _cert(
        "prometheus",
        client_key,
        ca,
        ca_key,
        [x509.DNSName("prometheus.monitoring.svc")],
        certs / "client.crt",
    )
    return PKI(
        dir=d,
        ca=certs / "ca.crt",
        server_cert=certs / "server.crt",
        server_key=_write_key(server_key, certs / "server.key"),
        client_cert=certs / "client.crt",
        client_key=_write_key(client_key, certs / "client.key"),
        other_key=_write_key(_key(), certs / "other.key"),
    )


def write_config(pki: PKI, text: str, name: str = "web.yml") -> Path:
    path = pki.dir / name
    path.write_text(text)
    return path


# Relative names: resolved against the config file's directory, not the working directory.
TLS = """
tls_server_config:
  cert_file: certs/server.crt
  key_file: certs/server.key
"""


@asynccontextmanager
async def serve(config: WebConfig, open_paths: frozenset[str] = HEALTH) -> AsyncIterator[str]:
    app = build_app(MetricsStore(), SelfMetrics(), lambda: True)
    config.install(app, open_paths)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = config.ssl_context()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def client_tls(
    pki: PKI, with_cert: bool = False, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if with_cert:
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


async def get(
    url: str,
    tls: ssl.SSLContext | None = None,
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str]]:
    headers = dict(headers or {})
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(url, ssl=tls if tls is not None else True, headers=headers) as r,
    ):
        await r.read()
        return r.status, dict(r.headers)


# --- TLS ---------------------------------------------------------------------------------


async def test_https_with_the_ca_and_relative_cert_paths(
    pki: PKI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config_file = write_config(
        pki, TLS + "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    )
    monkeypatch.chdir(tmp_path)  # elsewhere: relative names must not depend on it
    config = load_web_config(config_file)
    assert config.tls is not None and config.tls.cert_file == pki.server_cert
    async with serve(config) as url:
        assert url.startswith("https://")
        status, headers = await get(f"{url}/metrics", client_tls(pki))
        assert status == 200
        assert headers["X-Frame-Options"] == "deny"
        # Error responses carry the configured headers too.
        status, headers = await get(f"{url}/nothing-here", client_tls(pki))
        assert (status, headers["X-Frame-Options"]) == (404, "deny")
        # A client that does not trust our CA refuses the server.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(f"{url}/metrics", ssl.create_default_context())


async def test_plain_http_to_the_tls_port_fails(pki: PKI) -> None:
    async with serve(load_web_config(write_config(pki, TLS))) as url:
        with pytest.raises(aiohttp.ClientError):
            await get(url.replace("https://", "http://") + "/metrics")


async def test_mtls_requires_a_client_certificate_signed_by_the_ca(pki: PKI) -> None:
    text = TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: certs/ca.crt\n"
    async with serve(load_web_config(write_config(pki, text))) as url:
        with pytest.raises(aiohttp.ClientError):
            await get(f"{url}/metrics", client_tls(pki))
        status, _ = await get(f"{url}/metrics", client_tls(pki, with_cert=True))
        assert status == 200


async def test_client_certificate_is_optional_with_verify_if_given(pki: PKI) -> None:
    text = TLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: certs/ca.crt\n"
    async with serve(load_web_config(write_config(pki, text))) as url:
        assert (await get(f"{url}/metrics", client_tls(pki)))[0] == 200
        assert (await get(f"{url}/metrics", client_tls(pki, with_cert=True)))[0] == 200


@pytest.mark.parametrize(
    ("allowed", "status"),
    [("prometheus.monitoring.svc", 200), ("someone-else.example", 403)],
)
async def test_client_allowed_sans(pki: PKI, allowed: str, status: int) -> None:
    text = TLS + (
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_ca_file: certs/ca.crt\n"
        f"  client_allowed_sans: [{allowed}, '::1']\n"
    )
    async with serve(load_web_config(write_config(pki, text))) as url:
        assert (await get(f"{url}/metrics", client_tls(pki, with_cert=True)))[0] == status


async def test_min_version_tls13_rejects_a_tls12_client(pki: PKI) -> None:
    text = TLS + "  min_version: TLS13\n"
    async with serve(load_web_config(write_config(pki, text))) as url:
        with pytest.raises(aiohttp.ClientError):
            await get(f"{url}/metrics", client_tls(pki, max_version=ssl.TLSVersion.TLSv1_2))
        assert (await get(f"{url}/metrics", client_tls(pki)))[0] == 200


def test_every_mapped_cipher_suite_exists_in_openssl() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for go_name, openssl_name in webconfig.CIPHER_SUITES.items():
        ctx.set_ciphers(openssl_name)  # raises SSLError when OpenSSL does not know it
        assert go_name.startswith("TLS_")


def test_cipher_suites_and_versions_reach_the_context(pki: PKI) -> None:
    text = TLS + (
        "  max_version: TLS12\n"
        "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]\n"
        "  prefer_server_cipher_suites: false\n"
    )
    ctx = load_web_config(write_config(pki, text)).ssl_context()
    assert ctx is not None
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_2
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {"ECDHE-ECDSA-AES128-GCM-SHA256"}
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE


# --- basic auth, rate limit ------------------------------------------------------------


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Records the hash of every bcrypt check the middleware runs."""
    calls: list[bytes] = []
    real: Callable[[bytes, bytes], bool] = webconfig._checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(webconfig, "_checkpw", counting)
    return calls


@pytest.fixture
async def auth_url(pki: PKI) -> AsyncIterator[str]:
    text = f"basic_auth_users:\n  alice: '{HASH}'\n  bob: '{HASH}'\n"
    async with serve(load_web_config(write_config(pki, text))) as url:
        yield url


@pytest.mark.parametrize(
    ("path", "auth", "status"),
    [
        ("/metrics", ("alice", PASSWORD), 200),
        ("/metrics", ("alice", "wrong"), 401),
        ("/metrics", None, 401),
        ("/metrics", ("mallory", PASSWORD), 401),
        ("/metrics", ("alice", "x" * 100), 401),  # beyond bcrypt's 72 bytes
        ("/", None, 401),
        ("/nothing-here", None, 401),  # no hint of which paths exist
        ("/healthz", None, 200),
        ("/readyz", None, 200),
    ],
)
async def test_basic_auth(
    auth_url: str, path: str, auth: tuple[str, str] | None, status: int
) -> None:
    got, headers = await get(auth_url + path, auth=auth)
    assert got == status
    if status == 401:
        assert headers["WWW-Authenticate"] == "Basic"


@pytest.mark.parametrize(
    "header", ["Bearer abc", "Basic not-base64!", "Basic " + base64.b64encode(b"nocolon").decode()]
)
async def test_malformed_authorization_headers_are_401(auth_url: str, header: str) -> None:
    assert (await get(f"{auth_url}/metrics", headers={"Authorization": header}))[0] == 401


async def test_unknown_users_cost_one_bcrypt_and_logins_are_cached(
    auth_url: str, bcrypt_calls: list[bytes]
) -> None:
    assert (await get(f"{auth_url}/metrics", auth=("mallory", PASSWORD)))[0] == 401
    assert len(bcrypt_calls) == 1 and bcrypt_calls[0] != HASH.encode()  # the decoy
    # The decoy has the configured cost, so it takes as long as a real check.
    assert bcrypt_calls[0][:7] == HASH.encode()[:7]
    for _ in range(3):
        assert (await get(f"{auth_url}/metrics", auth=("alice", PASSWORD)))[0] == 200
    assert len(bcrypt_calls) == 2  # the first login only
    # Another user with the same password is checked on its own.
    assert (await get(f"{auth_url}/metrics", auth=("bob", PASSWORD)))[0] == 200
    # Failures are not cached: each one pays bcrypt again.
    for _ in range(2):
        assert (await get(f"{auth_url}/metrics", auth=("alice", "wrong")))[0] == 401
    assert len(bcrypt_calls) == 5


async def test_credentials_never_reach_logs_or_repr(
    pki: PKI, auth_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for auth in [("alice", "hunter2-secret"), ("mallory", PASSWORD), ("alice", PASSWORD)]:
        await get(f"{auth_url}/metrics", auth=auth)
    text = write_config(pki, f"basic_auth_users:\n  alice: '{HASH}'\n")
    config = load_web_config(text)
    logged = caplog.text
    for secret in ("hunter2-secret", PASSWORD, HASH, "alice", "mallory"):
        assert secret not in logged
    assert HASH not in repr(config)
    # A hash that is almost right is not echoed in the error either.
    broken = HASH[:-1] + "!"
    with pytest.raises(ConfigError) as exc:
        parse_web_config(f"basic_auth_users:\n  alice: '{broken}'\n", "web.yml", pki.dir)
    assert broken not in str(exc.value)


async def test_rate_limit_spares_health_probes(pki: PKI) -> None:
    text = "rate_limit:\n  interval: 1h\n  burst: 2\n"
    async with serve(load_web_config(write_config(pki, text))) as url:
        assert [(await get(f"{url}/metrics"))[0] for _ in range(3)] == [200, 200, 429]
        assert (await get(f"{url}/healthz"))[0] == 200


def test_token_bucket_refills_with_time() -> None:
    now = [0.0]
    bucket = webconfig._TokenBucket(webconfig.RateLimit(interval=10.0, burst=1), lambda: now[0])
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] = 9.0
    assert not bucket.take()
    now[0] = 10.0
    assert bucket.take()


# --- bad files ---------------------------------------------------------------------------


def _bad_configs() -> Iterator[tuple[str, str, str, str]]:
    """(id, file text, field path, words the message must contain)."""
    yield "unknown top key", "tls_config: {}\n", "tls_config", "unknown key"
    yield "unknown tls key", TLS + "  certfile: x\n", "tls_server_config.certfile", "unknown key"
    yield (
        "bad client_auth_type",
        TLS + "  client_auth_type: Always\n",
        "tls_server_config.client_auth_type",
        "'Always' is not one of NoClientCert",
    )
    yield (
        "unverifiable client_auth_type",
        TLS + "  client_auth_type: RequireAnyClientCert\n  client_ca_file: certs/ca.crt\n",
        "tls_server_config.client_auth_type",
        "RequireAndVerifyClientCert",
    )
    yield (
        "mTLS without a CA",
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
        "tls_server_config.client_ca_file",
        "is required",
    )
    yield (
        "CA without a policy",
        TLS + "  client_ca_file: certs/ca.crt\n",
        "tls_server_config.client_auth_type",
        "NoClientCert",
    )
    yield (
        "missing cert file",
        "tls_server_config:\n  cert_file: certs/nope.crt\n  key_file: certs/server.key\n",
        "tls_server_config.cert_file",
        "No such file",
    )
    yield (
        "no key file",
        "tls_server_config:\n  cert_file: certs/server.crt\n",
        "tls_server_config.key_file",
        "is required",
    )
    yield (
        "key does not match",
        "tls_server_config:\n  cert_file: certs/server.crt\n  key_file: certs/other.key\n",
        "tls_server_config.cert_file",
        "matches the certificate",
    )
    yield (
        "CA file is not PEM",
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: web.yml\n",
        "tls_server_config.client_ca_file",
        "cannot load CA",
    )
    yield (
        "inline key",
        "tls_server_config:\n  cert_file: certs/server.crt\n  key: secret\n",
        "tls_server_config.key",
        "key_file",
    )
    yield (
        "bad min_version",
        TLS + "  min_version: TLS1.2\n",
        "tls_server_config.min_version",
        "is not one of TLS10",
    )
    yield (
        "min above max",
        TLS + "  min_version: TLS13\n  max_version: TLS12\n",
        "tls_server_config.min_version",
        "above max_version",
    )
    yield (
        "unknown cipher",
        TLS + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
        "tls_server_config.cipher_suites[0]",
        "not a supported cipher suite",
    )
    yield (
        "curves",
        TLS + "  curve_preferences: [X25519]\n",
        "tls_server_config.curve_preferences",
        "not supported",
    )
    yield (
        "SANs without mTLS",
        TLS + "  client_allowed_sans: [a]\n",
        "tls_server_config.client_allowed_sans",
        "RequireAndVerifyClientCert",
    )
    yield (
        "bad bcrypt hash",
        "basic_auth_users:\n  alice: plain-text-password\n",
        "basic_auth_users.alice",
        "is not a bcrypt hash",
    )
    yield (
        "user with colon",
        f"basic_auth_users:\n  'a:b': '{HASH}'\n",
        "basic_auth_users",
        "without ':'",
    )
    yield (
        "header not allowed",
        "http_server_config:\n  headers:\n    Server: x\n",
        "http_server_config.headers.Server",
        "unknown key",
    )
    yield (
        "header value not allowed",
        "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
        "http_server_config.headers.X-Frame-Options",
        "deny, sameorigin",
    )
    yield (
        "http2 not a boolean",
        "http_server_config:\n  http2: yes please\n",
        "http_server_config.http2",
        "true or false",
    )
    yield (
        "rate limit without burst",
        "rate_limit:\n  interval: 1s\n",
        "rate_limit.burst",
        "is required",
    )
    yield "not YAML", "tls_server_config: [\n", "line 2, column 1", "invalid YAML"


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [case[1:] for case in _bad_configs()],
    ids=[case[0] for case in _bad_configs()],
)
def test_bad_web_configs_name_the_field(pki: PKI, text: str, path: str, words: str) -> None:
    config_file = write_config(pki, text, "bad.yml")
    with pytest.raises(ConfigError) as exc:
        load_web_config(config_file)
    assert exc.value.file == str(config_file)
    assert exc.value.path == path
    assert words in exc.value.message
    assert str(exc.value).startswith(f"{config_file}: ")


def test_missing_web_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_web_config(tmp_path / "absent.yml")


def test_empty_file_means_plain_http_without_auth(pki: PKI) -> None:
    config = load_web_config(write_config(pki, "", "empty.yml"))
    assert config.ssl_context() is None
    assert config == WebConfig(file=config.file)


def test_accepted_compatibility_keys(pki: PKI) -> None:
    text = TLS + (
        "  client_auth_type: RequestClientCert\n"
        "http_server_config:\n  http2: false\n  headers:\n    Content-Security-Policy: ''\n"
        "rate_limit:\n  interval: 0s\n  burst: 5\n"
    )
    config = load_web_config(write_config(pki, text))
    ctx = config.ssl_context()
    # Go accepts any certificate or none here; not asking has the same outcome.
    assert ctx is not None and ctx.verify_mode == ssl.CERT_NONE
    assert config.http2 is False and config.headers == () and config.rate_limit is None


@given(st.text(max_size=200))
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    with suppress(ConfigError):
        parse_web_config(text, "web.yml", Path("/nonexistent"))


@given(st.one_of(st.none(), st.text(max_size=100)))
def test_any_authorization_header_parses_or_is_refused(header: str | None) -> None:
    parsed = webconfig._parse_basic(header)
    assert parsed is None or isinstance(parsed[1], bytes)


def test_the_examples_in_docs_security_md_load(pki: PKI, tmp_path: Path) -> None:
    """Every complete web config example in the docs is valid, against real certificates."""
    tls = tmp_path / "tls"
    tls.mkdir()
    for source, name in [
        (pki.server_cert, "tls.crt"),
        (pki.server_key, "tls.key"),
        (pki.ca, "ca.crt"),
    ]:
        (tls / name).write_bytes(source.read_bytes())
    doc = (ROOT / "docs" / "security.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL)
    examples = [b for b in blocks if b.startswith(webconfig._TOP_KEYS) and "<" not in b]
    assert len(examples) >= 3
    for i, text in enumerate(examples):
        path = tmp_path / f"example-{i}.yml"
        path.write_text(text)
        load_web_config(path)
