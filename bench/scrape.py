"""Scrape path: the store behind the exporter's app vs prometheus_client vs a static body."""

from __future__ import annotations

import socket
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.common import child
from bench.report import Table, median, ms, percentile, ratio, size, verdict

SELF_PREFIX = "aws_iot_jobs_exporter_"
# Process and runtime collectors of the exporter's self-metrics registry: the store's
# body has them, prometheus_client's baseline registry does not.
RUNTIME_PREFIXES = ("process_", "python_")
SPEEDUP_TARGET = 30.0
# Median against the same bytes served as a constant: plain, and gzip with nothing changed.
PLAIN_FLOOR_TARGET = 1.0
FLOOR_TARGET = 1.5
# gzip right after one active job changed: absolute and against the constant body.
GZIP_CHANGED_MS = 10.0
GZIP_CHANGED_FLOOR = 5.0
# gzip body of the exporter against one-shot gzip.compress of the same text.
GZIP_SIZE_TARGET = 2.0


@dataclass(slots=True)
class Run:
    jobs: int
    server: str  # store, store+change, static, prometheus_client
    encoding: str  # identity or gzip
    latencies: list[float]
    size: int
    # Seconds the server spends per scrape rendering and compressing its self-metrics.
    own: float = 0.0

    @property
    def median(self) -> float:
        return median(self.latencies)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)


class Scraper:
    """A keep-alive HTTP/1.1 client, as Prometheus scrapes; times request to last byte.

    Reads into one buffer allocated up front (`socket.recv_into`), so that the client's
    own copying does not hide the server's cost: with `http.client`, reading 37.5 MiB
    took longer than the exporter took to send it, and every server looked alike.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = self._connect()
        self.buffer = bytearray(1 << 20)
        self.body_at = 0

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=300)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _grow(self, size: int) -> memoryview:
        """A view of the buffer, made at least `size` long (a copy once, when it grows)."""
        if len(self.buffer) < size:
            grown = bytearray(size)
            grown[: len(self.buffer)] = self.buffer
            self.buffer = grown
        return memoryview(self.buffer)

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[str, int]:
        """Sends a request and reads the whole answer; its head and the body's length."""
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Length: 0"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        view, got = memoryview(self.buffer), 0
        while (end := self.buffer.find(b"\r\n\r\n", 0, got)) < 0:
            n = self.sock.recv_into(view[got:])
            if not n:
                raise RuntimeError(f"{path}: connection closed in the response head")
            got += n
        head = bytes(self.buffer[:end]).decode("latin-1")
        fields = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
        )
        self.body_at = end + 4
        if "content-length" not in fields:
            # prometheus_client's server (HTTP/1.0): the body ends with the connection.
            while n := self.sock.recv_into(view[got:]):
                got += n
                if got == len(self.buffer):
                    view = self._grow(2 * got)
            self.sock.close()
            self.sock = self._connect()
            return head, got - self.body_at
        length = int(fields["content-length"])
        total = self.body_at + length
        view = self._grow(total)
        while got < total:
            n = self.sock.recv_into(view[got:total])
            if not n:
                raise RuntimeError(f"{path}: connection closed in the body")
            got += n
        if head.startswith("HTTP/1.0") or fields.get("connection", "").lower() == "close":
            # prometheus_client's server: one request per connection.
            self.sock.close()
            self.sock = self._connect()
        return head, length

    def get(self, gzip: bool, keep: bool = True) -> bytes | int:
        """The body of one scrape (or only its length, without copying it out)."""
        headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
        head, length = self._request("GET", "/metrics", headers)
        status = head.split(" ", 2)[1]
        if status != "200":
            raise RuntimeError(f"/metrics answered {status}")
        if gzip and "\r\ncontent-encoding: gzip" not in head.lower():
            raise RuntimeError("asked for gzip, got an identity body")
        if not keep:
            return length
        return bytes(self.buffer[self.body_at : self.body_at + length])

    def body(self, gzip: bool) -> bytes:
        body = self.get(gzip)
        assert isinstance(body, bytes)
        return body

    def touch(self) -> None:
        self._request("POST", "/bench/touch", {})

    def series(
        self, count: int, gzip: bool, change: bool, warmup: int = 2
    ) -> tuple[list[float], int]:
        latencies: list[float] = []
        length = 0
        for i in range(warmup + count):
            if change:
                self.touch()
            started = time.perf_counter()
            got = self.get(gzip, keep=False)
            elapsed = time.perf_counter() - started
            assert isinstance(got, int)
            length = got
            if i >= warmup:
                latencies.append(elapsed)
        return latencies, length

    def close(self) -> None:
        self.sock.close()


def single_member(body: bytes) -> bytes:
    """A gzip body decoded as curl and browsers do: its first member, which must be all."""
    d = zlib.decompressobj(31)
    text = d.decompress(body) + d.flush()
    if not d.eof or d.unused_data:
        raise RuntimeError(f"gzip body is not one whole member ({len(d.unused_data)} bytes after)")
    return text


def job_samples(body: bytes) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    """The job samples of an exposition, read by prometheus_client's own parser."""
    samples = set()
    for family in text_string_to_metric_families(body.decode()):
        if family.name.startswith((SELF_PREFIX, *RUNTIME_PREFIXES)):
            continue
        for s in family.samples:
            samples.add((s.name, tuple(sorted(s.labels.items())), float(s.value)))
    return samples


def measure(jobs: int, fixture: Path, scrapes: int, baseline_scrapes: int) -> tuple[list[Run], str]:
    runs: list[Run] = []
    bodies: dict[str, bytes] = {}
    with child("serve-store", fixture=str(fixture)) as proc:
        started = proc.read()
        scraper = Scraper(started["port"])
        bodies["store"] = scraper.body(gzip=False)
        bodies["store gzip"] = single_member(scraper.body(gzip=True))
        for gzip in (False, True):
            enc = "gzip" if gzip else "identity"
            lat, n = scraper.series(scrapes, gzip, change=False)
            runs.append(Run(jobs, "store", enc, lat, n, started["own"]))
            lat, n = scraper.series(scrapes, gzip, change=True)
            runs.append(Run(jobs, "store, 1 job changed", enc, lat, n, started["own"]))
        scraper.close()
    with child("serve-static", fixture=str(fixture)) as proc:
        scraper = Scraper(proc.read()["port"])
        for gzip in (False, True):
            lat, n = scraper.series(scrapes, gzip, change=False)
            runs.append(Run(jobs, "static body", "gzip" if gzip else "identity", lat, n))
        scraper.close()
    with child("serve-prom", fixture=str(fixture)) as proc:
        scraper = Scraper(proc.read()["port"])
        bodies["prom"] = scraper.body(gzip=False)
        for gzip in (False, True):
            lat, n = scraper.series(baseline_scrapes, gzip, change=False, warmup=1)
            runs.append(Run(jobs, "prometheus_client", "gzip" if gzip else "identity", lat, n))
        scraper.close()
    ours, zipped = job_samples(bodies["store"]), job_samples(bodies["store gzip"])
    theirs = job_samples(bodies["prom"])

    def same(a: set[Any], b: set[Any]) -> str:
        return "same" if a == b else f"DIFFERENT ({len(a ^ b)} differ)"

    check = f"{jobs} jobs: {len(ours)} job samples in the store, {len(theirs)} in "
    check += f"prometheus_client's body: {same(ours, theirs)}; the store's gzip body, "
    check += f"decoded as one member: {same(ours, zipped)}"
    return runs, check


def tables(runs: list[Run], checks: list[str]) -> list[Table]:
    latency = Table(
        "Scrape latency (request to last byte, keep-alive, loopback)",
        [
            "jobs",
            "server",
            "encoding",
            "body",
            "scrapes",
            "median",
            "p99",
            "prometheus_client / this",
            "this / static",
        ],
    )
    index = {(r.jobs, r.server, r.encoding): r for r in runs}
    for r in runs:
        base = index[(r.jobs, "prometheus_client", r.encoding)]
        floor = index[(r.jobs, "static body", r.encoding)]
        latency.add(
            r.jobs,
            r.server,
            r.encoding,
            size(r.size),
            len(r.latencies),
            ms(r.median),
            ms(r.p99),
            ratio(base.median, r.median, 1),
            ratio(r.median, floor.median),
        )
    latency.note("prometheus_client / this: how many times faster than the baseline (median).")
    latency.note("this / static: median over the floor, the same bytes served as a constant.")
    latency.note(
        "'1 job changed': one active job is re-rendered, and a self-metric counts its "
        "describe, before every scrape, as in a cycle."
    )
    for check in checks:
        latency.note(f"sample sets: {check}")

    top = max(r.jobs for r in runs)
    targets = Table(
        f"Scrape targets at {top} jobs",
        [
            "server",
            "encoding",
            "speed-up vs prometheus_client",
            "target",
            "vs static",
            "target",
            "result",
        ],
    )
    for server in ("store", "store, 1 job changed"):
        for enc in ("identity", "gzip"):
            r = index[(top, server, enc)]
            base = index[(top, "prometheus_client", enc)]
            floor = index[(top, "static body", enc)]
            speedup = base.median / r.median
            over = r.median / floor.median
            if enc == "identity":
                bound = PLAIN_FLOOR_TARGET
            elif server == "store, 1 job changed":
                bound = GZIP_CHANGED_FLOOR
            else:
                bound = FLOOR_TARGET
            targets.add(
                server,
                enc,
                f"{speedup:.1f}x",
                f">={SPEEDUP_TARGET:.0f}x",
                f"{over:.2f}x",
                f"<={bound}x",
                verdict(speedup >= SPEEDUP_TARGET and over <= bound),
            )
    targets.note(
        "The bound on a gzip scrape right after a change is 5x: it compresses what changed."
    )
    gzip = Table(
        f"gzip at {top} jobs: one member joined from cached parts vs a constant one-shot gzip",
        ["measure", "this", "constant", "ratio", "target", "result"],
    )
    floor = index[(top, "static body", "gzip")]
    still = index[(top, "store", "gzip")]
    changed = index[(top, "store, 1 job changed", "gzip")]
    gzip.add(
        "median, nothing changed",
        ms(still.median),
        ms(floor.median),
        ratio(still.median, floor.median),
        f"<={FLOOR_TARGET}x",
        verdict(still.median <= FLOOR_TARGET * floor.median),
    )
    gzip.add(
        "median, 1 active job changed",
        ms(changed.median),
        ms(floor.median),
        ratio(changed.median, floor.median),
        f"<={GZIP_CHANGED_MS:.0f} ms and <={GZIP_CHANGED_FLOOR:.0f}x",
        verdict(
            changed.median * 1000 <= GZIP_CHANGED_MS
            and changed.median <= GZIP_CHANGED_FLOOR * floor.median
        ),
    )
    gzip.add(
        "  less the self-metrics (render + compress)",
        ms(changed.median - changed.own),
        ms(floor.median),
        ratio(changed.median - changed.own, floor.median),
        "",
        "",
    )
    gzip.add(
        "body size",
        size(still.size),
        size(floor.size),
        ratio(still.size, floor.size),
        f"<={GZIP_SIZE_TARGET:.0f}x",
        verdict(still.size <= GZIP_SIZE_TARGET * floor.size),
    )
    gzip.note("constant: gzip.compress(body, 1) of the same text, made before the timer started.")
    gzip.note(
        f"self-metrics: rendered and compressed again after a change, {ms(still.own)} "
        "median measured in the server process; a scrape with nothing changed reuses them."
    )
    return [latency, targets, gzip]
