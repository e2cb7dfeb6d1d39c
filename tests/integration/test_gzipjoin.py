"""The gzip member joiner: CRC-32 combination against zlib, and members every decoder reads."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter import gzipjoin

POLY = 0xEDB88320


def reference_multmodp(a: int, b: int) -> int:
    """zlib's own bit-by-bit multmodp (crc32.c), transcribed."""
    m, p = 1 << 31, 0
    while a:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ POLY if b & 1 else b >> 1
    return p


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_multmodp_is_zlibs(a: int, b: int) -> None:
    assert gzipjoin.multmodp(a, b) == reference_multmodp(a, b)


@given(st.binary(max_size=300), st.binary(max_size=3000))
def test_combine_equals_crc32_of_the_concatenation(a: bytes, b: bytes) -> None:
    assert gzipjoin.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


@pytest.mark.parametrize(
    "length", [0, 1, 2, 7, 8, 255, 256, 4095, 65536, 1 << 20, 3 * (1 << 20) + 1]
)
def test_combine_at_lengths_around_powers_of_two(length: int) -> None:
    a, b = os.urandom(33), os.urandom(length)
    assert gzipjoin.crc32_combine(zlib.crc32(a), zlib.crc32(b), length) == zlib.crc32(a + b)
    # Shifting is what zlib does to a CRC it carries over `length` zero bytes.
    c1, c2, zeros = zlib.crc32(a), 0x89ABCDEF, b"\0" * length
    shifted = zlib.crc32(zeros, c1) ^ zlib.crc32(zeros)
    assert gzipjoin.crc32_combine(c1, c2, length) == shifted ^ c2


@pytest.mark.parametrize(
    ("m", "n"), [(0, 0), (1, 255), (256, 65535), (3 << 31, (1 << 33) + 12345), (1 << 40, 7)]
)
def test_shift_operators_compose_and_match_zlibs_bitwise_power(m: int, n: int) -> None:
    # Lengths past 2^32 too (ISIZE wraps, the CRC does not): x^(8(m+n)) = x^(8m) * x^(8n).
    combined = gzipjoin.shift_operator(m + n)
    assert combined == gzipjoin.multmodp(gzipjoin.shift_operator(m), gzipjoin.shift_operator(n))
    # The byte tables agree with zlib's bit-by-bit x2nmodp(length, 3).
    assert gzipjoin.shift_operator(m + n) == gzipjoin.x2nmodp(m + n, 3)


def test_shift_of_nothing_is_one_and_of_less_than_nothing_an_error() -> None:
    assert gzipjoin.shift_operator(0) == 1 << 31
    with pytest.raises(ValueError, match="length must be >= 0"):
        gzipjoin.shift_operator(-1)


@given(st.integers(0, 2**40))
def test_shift_operator_is_x2nmodp(length: int) -> None:
    assert gzipjoin.shift_operator(length) == gzipjoin.x2nmodp(length, 3)


def test_fold_and_then_equal_the_run_of_the_concatenation() -> None:
    chunks = [os.urandom(n) for n in (0, 5, 1000, 0, 70000, 1)]
    whole = gzipjoin.Run.of(b"".join(chunks))
    assert gzipjoin.fold(gzipjoin.Run.of(c) for c in chunks) == whole
    left = gzipjoin.fold(gzipjoin.Run.of(c) for c in chunks[:3])
    right = gzipjoin.fold(gzipjoin.Run.of(c) for c in chunks[3:])
    assert left.then(right) == whole
    assert gzipjoin.fold([]) == gzipjoin.Run()


def single_member(data: bytes) -> bytes:
    """Decoded as curl and browsers do: the first member only, which must be all of it."""
    d = zlib.decompressobj(31)
    out = d.decompress(data) + d.flush()
    assert d.eof and d.unused_data == b"", "more than one gzip member, or a truncated one"
    return out


TEXTS = [
    b"",
    b"a",
    b'aws_iot_job_info{job_id="x"} 1\n' * 5000,
    bytes(range(256)) * 40,
    b"\x00" * 100000,
    b'\x1f\x8b\x08\x00 looks like a header \xff\xfe"\\\n',
]


@pytest.mark.parametrize("level", [1, 6, 9])
def test_member_of_parts_is_one_member_of_the_whole_text(level: int) -> None:
    parts = [gzipjoin.compress(t, level) for t in TEXTS]
    body = gzipjoin.member(parts, level)
    text = b"".join(TEXTS)
    assert single_member(body) == text
    assert gzip.decompress(body) == text
    run = subprocess.run(["gzip", "-dc"], input=body, capture_output=True, check=True)
    assert run.stdout == text and run.stderr == b""
    # The header is gzip's, and the trailer holds the CRC and length of the whole text.
    assert body[:3] == b"\x1f\x8b\x08" and body[9] == 255
    assert struct.unpack("<II", body[-8:]) == (zlib.crc32(text), len(text))


def test_parts_join_in_any_order_and_repeat() -> None:
    parts = [gzipjoin.compress(t, 1) for t in TEXTS]
    order = [3, 0, 2, 2, 5, 1, 4, 3]
    body = gzipjoin.member([parts[i] for i in order], 1)
    assert single_member(body) == b"".join(TEXTS[i] for i in order)


def test_isize_is_the_length_modulo_two_to_the_32() -> None:
    run = gzipjoin.Run(crc=0x12345678, size=(1 << 32) + 5)
    assert gzipjoin.trailer(run, 1)[-8:] == struct.pack("<II", 0x12345678, 5)


@given(st.lists(st.binary(max_size=2000), max_size=8), st.sampled_from([1, 9]))
def test_any_parts_decode_whole(texts: list[bytes], level: int) -> None:
    body = gzipjoin.member((gzipjoin.compress(t, level) for t in texts), level)
    assert single_member(body) == b"".join(texts)
