"""One gzip member (RFC 1952) joined from separately compressed parts, as pigz does.

Each part is a raw deflate stream ended with a full flush: byte-aligned, not final, and
independent of what comes before it, so cached parts can be joined in any order between
one gzip header and one trailer. The trailer's CRC-32 is combined from the parts' own
CRCs with zlib's crc32_combine arithmetic, which Python's zlib does not expose. A
gzip body made of several members instead is valid RFC 1952 but curl and browsers
decode only the first member, silently.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

# CRC-32 (IEEE 802.3), reflected, as zlib and gzip compute it.
_POLY = 0xEDB88320
_TOP = 1 << 31  # x^0 in the reflected representation


def _times_x4() -> tuple[int, ...]:
    """n(x) * x^4 for the 16 reflected values n of the lowest nibble (degrees 28..31)."""
    out = []
    for n in range(16):
        for _ in range(4):
            n = (n >> 1) ^ _POLY if n & 1 else n >> 1
        out.append(n)
    return tuple(out)


_X4 = _times_x4()


def multmodp(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC-32 polynomial, both reflected 32-bit (zlib's multmodp).

    zlib walks a's 32 bits; this walks its 8 nibbles (Horner, highest degrees first)
    with a 16-entry table of b's multiples: about 1.5 times as fast in Python, measured.
    """
    b1 = (b >> 1) ^ _POLY if b & 1 else b >> 1
    b2 = (b1 >> 1) ^ _POLY if b1 & 1 else b1 >> 1
    b3 = (b2 >> 1) ^ _POLY if b2 & 1 else b2 >> 1
    # t[n] = n(x) * b(x) for a nibble n whose bit 3 is x^0 and bit 0 is x^3.
    low, high = (0, b3, b2, b2 ^ b3), (0, b1, b, b ^ b1)
    t = [h ^ lo for h in high for lo in low]
    x4 = _X4
    p = t[a & 15]
    p = (p >> 4) ^ x4[p & 15] ^ t[(a >> 4) & 15]
    p = (p >> 4) ^ x4[p & 15] ^ t[(a >> 8) & 15]
    p = (p >> 4) ^ x4[p & 15] ^ t[(a >> 12) & 15]
    p = (p >> 4) ^ x4[p & 15] ^ t[(a >> 16) & 15]
    p = (p >> 4) ^ x4[p & 15] ^ t[(a >> 20) & 15]
    p = (p >> 4) ^ x4[p & 15] ^ t[(a >> 24) & 15]
    return (p >> 4) ^ x4[p & 15] ^ t[(a >> 28) & 15]


def _byte_tables() -> tuple[tuple[int, ...], ...]:
    """table[k][v] = x^(8 * v * 256^k) modulo the polynomial, for k = 0..3 and v = 0..255."""
    tables = []
    x2n = 1 << 30  # x^(2^0)
    for _ in range(3):  # x^(2^3) = x^8: one byte
        x2n = multmodp(x2n, x2n)
    for _ in range(4):
        powers = []  # x^(8 * 2^j * 256^k) for the 8 bits j of v
        for _ in range(8):
            powers.append(x2n)
            x2n = multmodp(x2n, x2n)
        table = [_TOP]
        for bit, power in enumerate(powers):
            table += [multmodp(power, t) for t in table[: 1 << bit]]
        tables.append(tuple(table))
    return tuple(tables)


_BYTES = _byte_tables()


def _x2n_table() -> tuple[int, ...]:
    """x^(2^n) modulo the polynomial for n = 0..31; x^(2^32) is x again (zlib's x2n_table)."""
    table, p = [], 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = multmodp(p, p)
    return tuple(table)


_X2N = _x2n_table()


def x2nmodp(n: int, k: int) -> int:
    """x^(n * 2^k) modulo the polynomial, bit by bit (zlib's x2nmodp)."""
    p = _TOP
    while n:
        if n & 1:
            p = multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


@lru_cache(maxsize=4096)
def shift_operator(length: int) -> int:
    """x^(8 * length) modulo the polynomial: what appending `length` bytes does to a CRC.

    zlib's x2nmodp(length, 3), read a byte of `length` at a time from tables of powers
    (3 multiplications instead of one per set bit), and cached: parts that did not change
    keep their lengths from scrape to scrape. Multiplying by it is the GF(2) matrix power
    of the older crc32_combine.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    t0, t1, t2, t3 = _BYTES
    low = multmodp(
        multmodp(t0[length & 255], t1[(length >> 8) & 255]),
        multmodp(t2[(length >> 16) & 255], t3[(length >> 24) & 255]),
    )
    return multmodp(x2nmodp(length >> 32, 35), low) if length >> 32 else low


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """zlib.crc32(a + b) from crc1 = zlib.crc32(a), crc2 = zlib.crc32(b) and len2 = len(b)."""
    return multmodp(shift_operator(len2), crc1) ^ crc2


@dataclass(frozen=True, slots=True)
class Run:
    """CRC-32 and length of some bytes."""

    crc: int = 0
    size: int = 0

    @staticmethod
    def of(data: bytes | bytearray | memoryview) -> Run:
        return Run(zlib.crc32(data), len(data))

    @property
    def shift(self) -> int:
        return shift_operator(self.size)

    def then(self, other: Run) -> Run:
        """The run of these bytes followed by `other`'s."""
        return Run(multmodp(other.shift, self.crc) ^ other.crc, self.size + other.size)


def fold(runs: Iterable[Run]) -> Run:
    """The run of the concatenation, left to right: one multiplication per run."""
    crc = size = 0
    for run in runs:
        crc = multmodp(shift_operator(run.size), crc) ^ run.crc
        size += run.size
    return Run(crc, size)


@dataclass(frozen=True, slots=True)
class Part:
    """Raw deflate of some bytes, byte-aligned and not final, with their CRC and length."""

    deflate: bytes
    run: Run


def compress(data: bytes | bytearray | memoryview, level: int) -> Part:
    """One part: a fresh raw deflate stream (no dictionary from earlier parts), flushed.

    Z_FULL_FLUSH ends it on a byte boundary with an empty stored block that is not the
    final block, so the decoder carries on into whatever part comes next.
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    deflate = compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)
    return Part(deflate, Run.of(data))


def header(level: int) -> bytes:
    """A gzip header without name or time (MTIME 0), XFL as gzip sets it, OS unknown."""
    xfl = 4 if level == 1 else 2 if level == 9 else 0
    return struct.pack("<BBBBIBB", 0x1F, 0x8B, 8, 0, 0, xfl, 255)


def trailer(run: Run, level: int) -> bytes:
    """The final deflate block, then CRC-32 and ISIZE (length mod 2^32) of the whole text."""
    return _final_block(level) + struct.pack("<II", run.crc, run.size & 0xFFFFFFFF)


@lru_cache(maxsize=16)
def _final_block(level: int) -> bytes:
    """An empty final deflate block, as a fresh stream ends with nothing to compress."""
    return zlib.compressobj(level, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)


def member(parts: Iterable[Part], level: int) -> bytes:
    """One gzip member of the parts' texts, in order."""
    parts = list(parts)
    run = fold(p.run for p in parts)
    return header(level) + b"".join(p.deflate for p in parts) + trailer(run, level)
