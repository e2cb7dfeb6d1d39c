"""`--web.config.file`: TLS, client certificates, basic auth and response headers, in the
format of the Prometheus exporter-toolkit, so one web config serves every exporter."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from exporter.config import ConfigError
from exporter.detached import run_detached
from exporter.reader import Reader, field_name, kind, load_yaml, read_file, shown

log = logging.getLogger(__name__)

# Go's names (crypto/tls.ClientAuthType). Python's ssl module always verifies a client
# certificate it asks for, so the two Go modes that take a certificate without checking
# it have no faithful equivalent; see _CLIENT_AUTH_UNSUPPORTED.
CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
_CLIENT_AUTH_UNSUPPORTED = frozenset({"RequireAnyClientCert", "RequireClientCert"})

TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's crypto/tls.CipherSuites() names, as written in exporter-toolkit web configs, to
# OpenSSL's names. Go's insecure suites (RC4, 3DES, CBC-SHA256) are deliberately absent.
CIPHER_SUITES: Mapping[str, str] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# Go lists these in CipherSuites() too but ignores them in a config, because TLS 1.3
# suites are not configurable there; OpenSSL's TLS 1.3 defaults are the same three.
_TLS13_SUITES = frozenset(
    {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
)

# exporter-toolkit allows only these headers, and checks the values of the two that are
# enumerations; the same list keeps a web config portable between exporters.
EXTRA_HEADERS: Mapping[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
_TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_ca",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "cert",
    "key",
    "curve_preferences",
)
_HTTP_KEYS = ("http2", "headers")
_RATE_LIMIT_KEYS = ("interval", "burst")
# Modular crypt format of bcrypt as Go's x/crypto/bcrypt and pyca/bcrypt both read it.
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
# Each step of cost doubles a check: cost 10 takes about 0.1 s of a core, 14 about 1.5 s,
# 17 about 7 s. exporter-toolkit users hash at 10 to 12; above 14 a single unknown
# password costs seconds of CPU, and a check in flight would outlast SIGTERM's deadline.
BCRYPT_MAX_COST = 14
# A well-formed hash whose password nobody knows: unknown users are checked against it
# at the configured cost so that they take as long as a wrong password does.
_DECOY_BODY = "N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"
# Successful logins remembered; only successes, so guessing cannot grow it.
_VERIFIED_CACHE_SIZE = 256
# Logins not yet verified that may wait for bcrypt (one runs at a time); more are turned
# away at once with 503, so a flood of bad passwords queues a second or so of work at
# most and never delays a remembered login, which skips bcrypt altogether.
MAX_UNVERIFIED_LOGINS = 4
_BCRYPT_MAX_PASSWORD = 72


@dataclass(frozen=True, slots=True)
class TLSServerConfig:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    client_ca: str | None = None
    client_allowed_sans: frozenset[str] = frozenset()
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    # OpenSSL names, in the configured order.
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket shared by all clients: one request per `interval`, `burst` at once."""

    interval: float
    burst: int


@dataclass(frozen=True, slots=True)
class WebConfig:
    file: str
    tls: TLSServerConfig | None = None
    # Header name → value, in file order.
    headers: tuple[tuple[str, str], ...] = ()
    # User → bcrypt hash. Hashes can be attacked offline, so they stay out of repr.
    basic_auth_users: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    rate_limit: RateLimit | None = None
    # Accepted for compatibility; aiohttp serves HTTP/1.1 only.
    http2: bool = True

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server-side TLS context, or None for plain HTTP; raises ConfigError."""
        if self.tls is None:
            return None
        return _build_ssl_context(self.file, self.tls)

    def middleware(self, open_paths: frozenset[str] = frozenset()) -> Middleware:
        """Basic auth, rate limit and client certificate SANs.

        Routes whose path is in `open_paths` (health probes, which kubelets and load
        balancers call without credentials) skip basic auth and the rate limit.
        """
        return _make_middleware(self, open_paths)

    def install(self, app: web.Application, open_paths: frozenset[str] = frozenset()) -> None:
        """Adds the middleware and the extra response headers to an app not yet started.

        The middleware goes first, outside the app's own in-flight limit: a request whose
        login is not yet known to be good never holds one of the scrape slots.

        The headers are set when a response is prepared, the one moment every response
        passes through: streamed ones (/metrics) have sent theirs before a middleware
        sees them return, and error responses are built from exceptions.
        """
        app.middlewares.insert(0, self.middleware(open_paths))
        if self.headers:
            extra = dict(self.headers)

            async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
                response.headers.update(extra)

            app.on_response_prepare.append(add_headers)


def load_web_config(path: str | Path) -> WebConfig:
    """Read and validate a web config file, certificates included; raises ConfigError."""
    name = str(path)
    text = read_file(path, ConfigError)
    config = parse_web_config(text, name, Path(path).resolve().parent)
    # Loading the certificates now turns a wrong path or a key that does not match into
    # a start-up error instead of a failed handshake on the first scrape.
    config.ssl_context()
    if config.basic_auth_users and config.tls is None:
        log.warning("basic auth without TLS: passwords cross the network in clear file=%s", name)
    return config


def parse_web_config(text: str, file: str, directory: Path) -> WebConfig:
    """Parse web config text; relative file names are taken from `directory`, as
    exporter-toolkit does, so a config and its certificates can move together."""
    r = Reader(file, ConfigError)
    raw = load_yaml(text, file, ConfigError)
    data = r.mapping(raw, "", _TOP_KEYS)
    http2, headers = _read_http(r, data.get("http_server_config"))
    return WebConfig(
        file=file,
        tls=_read_tls(r, data.get("tls_server_config"), directory),
        headers=headers,
        basic_auth_users=_read_users(r, data.get("basic_auth_users")),
        rate_limit=_read_rate_limit(r, data.get("rate_limit")),
        http2=http2,
    )


def _strings(r: Reader, value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise r.fail(path, f"expected a list of strings, got {kind(value)}")
    return tuple(r.string(item, f"{path}[{i}]") for i, item in enumerate(value))


def _read_tls(r: Reader, value: Any, directory: Path) -> TLSServerConfig | None:
    p = "tls_server_config"
    data = r.mapping(value, p, _TLS_KEYS)
    if not data:
        return None
    for key in ("cert", "key"):
        if data.get(key) is not None:
            # Python's ssl loads a certificate chain from files only, and writing the key
            # to a temporary file is not an option on a read-only root file system.
            raise r.fail(f"{p}.{key}", f"inline PEM is not supported; use {key}_file")
    if data.get("curve_preferences") is not None:
        raise r.fail(
            f"{p}.curve_preferences",
            "is not supported: Python's ssl module cannot set a list of curves; "
            "OpenSSL's defaults (X25519, P-256, P-384, P-521) are used",
        )
    for key in ("cert_file", "key_file"):
        if data.get(key) is None:
            raise r.fail(f"{p}.{key}", "is required when tls_server_config is set")

    def file(key: str) -> Path:
        return _resolve(directory, r.string(data[key], f"{p}.{key}"))

    client_auth = r.choice(
        data.get("client_auth_type") or "NoClientCert", f"{p}.client_auth_type", CLIENT_AUTH_TYPES
    )
    if client_auth in _CLIENT_AUTH_UNSUPPORTED:
        raise r.fail(
            f"{p}.client_auth_type",
            f"{client_auth} accepts a client certificate without verifying it, which "
            "Python's ssl module cannot do; use RequireAndVerifyClientCert with client_ca_file",
        )
    ca_file = file("client_ca_file") if data.get("client_ca_file") is not None else None
    ca_text = r.opt(data, "client_ca", p, r.string)
    if ca_file is not None and ca_text is not None:
        raise r.fail(f"{p}.client_ca", "set either client_ca or client_ca_file, not both")
    verifying = client_auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
    if verifying and ca_file is None and ca_text is None:
        raise r.fail(f"{p}.client_ca_file", f"is required with client_auth_type {client_auth}")
    if (ca_file is not None or ca_text is not None) and client_auth == "NoClientCert":
        # exporter-toolkit refuses this too: a CA without a policy looks like mTLS but is not.
        raise r.fail(
            f"{p}.client_auth_type",
            "client CAs are configured but client_auth_type is NoClientCert; "
            "use RequireAndVerifyClientCert",
        )

    sans: frozenset[str] = frozenset()
    if data.get("client_allowed_sans") is not None:
        if client_auth != "RequireAndVerifyClientCert":
            raise r.fail(
                f"{p}.client_allowed_sans",
                "requires client_auth_type RequireAndVerifyClientCert: other types let a "
                "client connect without a certificate, leaving no SAN to check",
            )
        names = _strings(r, data["client_allowed_sans"], f"{p}.client_allowed_sans")
        sans = frozenset(_normalise_san(name) for name in names)

    def version(key: str, default: str) -> ssl.TLSVersion:
        name = r.choice(data.get(key) or default, f"{p}.{key}", tuple(TLS_VERSIONS))
        return TLS_VERSIONS[name]

    min_version, max_version = version("min_version", "TLS12"), version("max_version", "TLS13")
    if min_version > max_version:
        raise r.fail(f"{p}.min_version", "is above max_version")

    ciphers: list[str] = []
    if data.get("cipher_suites") is not None:
        names = _strings(r, data["cipher_suites"], f"{p}.cipher_suites")
        for i, name in enumerate(names):
            if name in _TLS13_SUITES:
                continue
            if name not in CIPHER_SUITES:
                raise r.fail(
                    f"{p}.cipher_suites[{i}]",
                    f"{shown(name)} is not a supported cipher suite; expected one of "
                    f"{', '.join(CIPHER_SUITES)} (TLS 1.3 suites are accepted and not "
                    "configurable)",
                )
            ciphers.append(CIPHER_SUITES[name])
    prefer = data.get("prefer_server_cipher_suites")
    return TLSServerConfig(
        cert_file=file("cert_file"),
        key_file=file("key_file"),
        client_auth_type=client_auth,
        client_ca_file=ca_file,
        client_ca=ca_text,
        client_allowed_sans=sans,
        min_version=min_version,
        max_version=max_version,
        cipher_suites=tuple(ciphers),
        prefer_server_cipher_suites=True
        if prefer is None
        else r.boolean(prefer, f"{p}.prefer_server_cipher_suites"),
    )


def _resolve(directory: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else directory / path


def _normalise_san(value: str) -> str:
    # Go prints IPs compactly (::1) and Python's ssl module spells them out (0:0:...:1);
    # comparing the canonical form makes both configs and certificates match.
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value


def _read_http(r: Reader, value: Any) -> tuple[bool, tuple[tuple[str, str], ...]]:
    p = "http_server_config"
    data = r.mapping(value, p, _HTTP_KEYS)
    http2 = True
    if data.get("http2") is not None:
        http2 = r.boolean(data["http2"], f"{p}.http2")
    headers = r.mapping(data.get("headers"), f"{p}.headers", tuple(EXTRA_HEADERS))
    out: list[tuple[str, str]] = []
    for name, raw in headers.items():
        where = f"{p}.headers.{name}"
        if raw is None or raw == "":
            continue  # blank means unset, as in exporter-toolkit
        text = r.string(raw, where)
        allowed = EXTRA_HEADERS[name]
        if allowed and text not in allowed:
            raise r.fail(where, f"{shown(text)} is not one of {', '.join(allowed)}")
        if any(c in text for c in "\r\n\0"):
            raise r.fail(where, "must be one line")
        out.append((name, text))
    return http2, tuple(out)


def _read_users(r: Reader, value: Any) -> tuple[tuple[str, str], ...]:
    p = "basic_auth_users"
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise r.fail(p, f"expected a mapping of user to bcrypt hash, got {kind(value)}")
    users: list[tuple[str, str]] = []
    for user, hashed in value.items():
        if not isinstance(user, str) or user == "" or ":" in user:
            # A colon ends the user name in the Authorization header (RFC 7617).
            raise r.fail(p, f"user names must be non-empty strings without ':', got {shown(user)}")
        where = f"{p}.{field_name(user)}"
        # The hash is never echoed: it can be brute-forced offline.
        if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
            raise r.fail(
                where,
                f"is not a bcrypt hash ($2a$, $2b$ or $2y$, cost 04 to {BCRYPT_MAX_COST})",
            )
        cost = int(hashed[4:6])
        if cost > BCRYPT_MAX_COST:
            raise r.fail(
                where,
                f"has bcrypt cost {cost}, above the {BCRYPT_MAX_COST} accepted: each check "
                "of a wrong password would take seconds of CPU and hold shutdown; "
                "hash it again at cost 10 to 12 (htpasswd -nBC 10 USER)",
            )
        users.append((user, hashed))
    return tuple(users)


def _read_rate_limit(r: Reader, value: Any) -> RateLimit | None:
    p = "rate_limit"
    data = r.mapping(value, p, _RATE_LIMIT_KEYS)
    raw = data.get("interval")
    if raw is None or raw in (0, "0", "0s"):
        return None  # exporter-toolkit: an interval of 0 disables the limiter
    interval = r.duration(raw, f"{p}.interval")
    if data.get("burst") is None:
        raise r.fail(f"{p}.burst", "is required when rate_limit.interval is set")
    return RateLimit(interval=interval, burst=r.integer(data["burst"], f"{p}.burst", 1, 1_000_000))


def _build_ssl_context(file: str, tls: TLSServerConfig) -> ssl.SSLContext:
    p = "tls_server_config"
    for key, path in (
        ("cert_file", tls.cert_file),
        ("key_file", tls.key_file),
        ("client_ca_file", tls.client_ca_file),
    ):
        if path is not None:
            try:
                path.open("rb").close()
            except OSError as exc:
                raise ConfigError(
                    file, f"{p}.{key}", f"cannot read {path}: {exc.strerror or exc}"
                ) from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = tls.min_version
    ctx.maximum_version = tls.max_version
    try:
        # A password callback, so an encrypted key fails here instead of prompting on a
        # terminal that a container does not have.
        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=lambda: b"")
    except ssl.SSLError as exc:
        raise ConfigError(
            file,
            f"{p}.cert_file",
            f"cannot load {tls.cert_file} with key {tls.key_file}: {_ssl_reason(exc)} "
            "(expected PEM, an unencrypted key, and a key that matches the certificate)",
        ) from None
    if tls.cipher_suites:
        try:
            ctx.set_ciphers(":".join(tls.cipher_suites))
        except ssl.SSLError:
            raise ConfigError(
                file, f"{p}.cipher_suites", "none of these suites is available in this OpenSSL"
            ) from None
    if not tls.prefer_server_cipher_suites:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.client_ca_file is not None or tls.client_ca is not None:
        try:
            if tls.client_ca_file is not None:
                ctx.load_verify_locations(cafile=tls.client_ca_file)
            else:
                ctx.load_verify_locations(cadata=tls.client_ca)
        except (ssl.SSLError, ValueError) as exc:
            key = "client_ca_file" if tls.client_ca_file is not None else "client_ca"
            raise ConfigError(
                file, f"{p}.{key}", f"cannot load CA certificates: {_ssl_reason(exc)}"
            ) from None
    # RequestClientCert: Go asks for a certificate and accepts anything or nothing,
    # which authenticates no one; not asking has the same outcome for every client.
    ctx.verify_mode = {
        "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
        "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    }.get(tls.client_auth_type, ssl.CERT_NONE)
    # aiohttp speaks HTTP/1.1 only; advertising it lets HTTP/2-first clients settle at once.
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _ssl_reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or getattr(exc, "strerror", None) or exc)


def _make_middleware(config: WebConfig, open_paths: frozenset[str]) -> Middleware:
    auth = _BasicAuth(config.basic_auth_users) if config.basic_auth_users else None
    bucket = _TokenBucket(config.rate_limit) if config.rate_limit is not None else None
    sans = config.tls.client_allowed_sans if config.tls is not None else frozenset()

    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        if sans and not _peer_has_allowed_san(request, sans):
            # Go closes the connection in the handshake; after it, 403 is the nearest.
            raise web.HTTPForbidden(text="client certificate not allowed\n")
        # Decided by the route the request resolved to, not by the raw path, so that no
        # spelling of a URL reaches another handler unauthenticated.
        resource = request.match_info.route.resource
        if resource is not None and resource.canonical in open_paths:
            return await handler(request)
        if bucket is not None and not bucket.take():
            raise web.HTTPTooManyRequests(text="rate limit exceeded\n")
        if auth is not None:
            verdict = await auth.check(request.headers.get("Authorization"))
            if verdict is None:
                log.debug("basic auth shed path=%s remote=%s", request.path, request.remote)
                raise web.HTTPServiceUnavailable(
                    text="too many logins being checked\n", headers={"Retry-After": "1"}
                )
            if not verdict:
                log.debug("basic auth rejected path=%s remote=%s", request.path, request.remote)
                raise web.HTTPUnauthorized(
                    text="unauthorized\n", headers={"WWW-Authenticate": "Basic"}
                )
        return await handler(request)

    @web.middleware
    async def web_config_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await guarded(request, handler)

    return web_config_middleware


def _peer_has_allowed_san(request: web.Request, allowed: frozenset[str]) -> bool:
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return False
    for san_type, value in cert.get("subjectAltName", ()):
        if san_type in ("DNS", "email", "URI") and value in allowed:
            return True
        if san_type == "IP Address" and _normalise_san(value) in allowed:
            return True
    return False


class _TokenBucket:
    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = limit.interval
        self._burst = float(limit.burst)
        self._tokens = float(limit.burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) / self._interval)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class _BasicAuth:
    def __init__(self, users: tuple[tuple[str, str], ...]) -> None:
        self._users = {user.encode(): hashed.encode() for user, hashed in users}
        cost = max(int(hashed[4:6]) for _, hashed in users)
        self._decoy = f"$2b${cost:02d}${_DECOY_BODY}".encode()
        # Cache keys are keyed hashes, so the cache holds nothing a memory dump could
        # brute-force faster than the bcrypt hashes themselves.
        self._key_secret = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        # One bcrypt at a time, as exporter-toolkit does: a flood of bad passwords then
        # costs one core, and cached logins (every scrape after the first) never wait.
        self._lock = asyncio.Lock()
        self._unverified = 0

    def _cache_key(self, user: bytes, hashed: bytes, password: bytes) -> bytes:
        mac = hmac.new(self._key_secret, digestmod=hashlib.sha256)
        for part in (user, hashed, password):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.digest()

    async def check(self, header: str | None) -> bool | None:
        """True for a good login, False for a bad one, None when too many wait to be checked."""
        credentials = _parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        stored = self._users.get(user)
        hashed = stored if stored is not None else self._decoy
        key = self._cache_key(user, hashed, password)
        if stored is not None and key in self._verified:
            self._verified.move_to_end(key)
            return True
        if self._unverified >= MAX_UNVERIFIED_LOGINS:
            return None
        self._unverified += 1
        try:
            async with self._lock:
                # bcrypt takes tens of milliseconds by design and releases the GIL; on the
                # event loop it would stall every other scrape and the collector. A daemon
                # thread, so that a check in flight never delays the exit on SIGTERM.
                ok = await run_detached(_checkpw, password, hashed)
        finally:
            self._unverified -= 1
        # Unknown users ran the same bcrypt, against the decoy, and fail here.
        if not ok or stored is None:
            return False
        self._verified[key] = None
        if len(self._verified) > _VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return True


def _checkpw(password: bytes, hashed: bytes) -> bool:
    # bcrypt reads 72 bytes at most; older pyca/bcrypt releases cut longer passwords
    # silently, newer ones raise. Refusing them, as Go's bcrypt does, is the same on all.
    if len(password) > _BCRYPT_MAX_PASSWORD:
        return False
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


def _parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None
