"""The 533-character ``iqdb_`` hash, both ways (DESIGN.md section 4, "Hash")."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from mediaq.errors import InvalidHashError
from mediaq.pure.iqdb.compute import signature_from_rgb
from mediaq.pure.iqdb.signature import (
    HASH_LENGTH,
    Signature,
    format_hash,
    is_hash,
    pack_signature,
    parse_hash,
    unpack_signature,
)


def _random_signature(seed: int) -> Signature:
    rng = np.random.default_rng(seed)
    sig = np.stack([rng.choice(np.arange(1, 16384), 40, replace=False) * rng.choice([-1, 1], 40)
                    for _ in range(3)])
    return Signature(tuple(rng.normal(size=3) * [1, 0.1, 0.1]), sig.astype(np.int16))


def test_layout_by_hand():
    """avglf as big-endian IEEE bits, then int16 two's complement, lowercase, Y then I then Q."""
    sig = Signature((1.0, -0.5, 2.0 ** -30), np.array([list(range(-40, 0)), list(range(1, 41)),
                                                       [-16383, *range(1, 40)]], np.int16))
    text = format_hash(sig)
    assert len(text) == HASH_LENGTH == 533
    assert text.startswith("iqdb_3ff0000000000000" "bfe0000000000000" "3e10000000000000")
    coefs = text[5 + 48:]
    assert coefs[:8] == "ffd8ffd9"  # -40, -39
    assert coefs[40 * 4:40 * 4 + 8] == "00010002"  # I starts at +1, +2
    assert coefs[80 * 4:80 * 4 + 4] == "c001"  # Q's -16383
    assert text == text.lower()


@pytest.mark.parametrize("seed", range(20))
def test_round_trip(seed):
    sig = _random_signature(seed)
    text = format_hash(sig)
    back = parse_hash(text)
    assert back == sig and format_hash(back) == text
    assert struct.pack(">3d", *back.avglf) == struct.pack(">3d", *sig.avglf)  # bit exact, -0.0 too
    assert unpack_signature(pack_signature(sig)) == sig
    assert is_hash(text)


# An independent implementation's test vector: iqdb-rs (github.com/TheBobBobs/iqdb-rs, src/lib.rs,
# test `hash`) formats this signature (computed from danbooru post 138934) as the hash below. It checks
# our encoding against code we did not write, not against our own output.
IQDB_RS_AVGLF = (0.76577718136597, -0.00011652168713282838, 0.004947875142783265)
IQDB_RS_SIG = [
    [-1933, -1920, -1152, -1029, -1026, -782, -773, -768, -522, -387, -384, -258, -140, -133, -131, -128, -28, -26,
     -14, -13, -7, -3, 1, 2, 5, 10, 12, 130, 138, 141, 256, 259, 386, 512, 770, 1024, 1027, 1280, 1925, 2560],
    [-4864, -2562, -1557, -1550, -1543, -1541, -1536, -1027, -1024, -919, -896, -645, -640, -512, -261, -258, -257,
     -133, 128, 131, 134, 141, 256, 259, 384, 646, 901, 908, 1026, 1029, 1286, 1290, 1538, 2560, 2563, 2694, 4869,
     4876, 5120, 5123],
    [-5120, -2694, -2563, -2560, -1290, -1286, -1027, -1024, -921, -918, -908, -901, -898, -646, -642, -407, -259,
     -256, -25, -12, -5, -2, 3, 13, 128, 133, 140, 258, 389, 396, 406, 640, 643, 896, 899, 919, 922, 2562, 2566, 2699],
]
IQDB_RS_HASH = (
    "iqdb_3fe8813f25bfad46bf1e8ba3578fff323f7444391ec46274f873f880fb80fbfbfbfefcf2fcfbfd00fdf6fe7dfe80fefeff74ff7bff"
    "7dff80ffe4ffe6fff2fff3fff9fffd000100020005000a000c0082008a008d0100010301820200030204000403050007850a00ed00f5fe"
    "f9ebf9f2f9f9f9fbfa00fbfdfc00fc69fc80fd7bfd80fe00fefbfefefeffff7b008000830086008d01000103018002860385038c040204"
    "050506050a06020a000a030a861305130c14001403ec00f57af5fdf600faf6fafafbfdfc00fc67fc6afc74fc7bfc7efd7afd7efe69fefd"
    "ff00ffe7fff4fffbfffe0003000d00800085008c01020185018c019602800283038003830397039a0a020a060a8b"
)


def test_hash_matches_an_independent_implementation():
    sig = Signature(IQDB_RS_AVGLF, np.array(IQDB_RS_SIG, dtype=np.int16))
    assert format_hash(sig) == IQDB_RS_HASH
    parsed = parse_hash(IQDB_RS_HASH)
    assert parsed.avglf == IQDB_RS_AVGLF and parsed.sig.tolist() == IQDB_RS_SIG


def test_round_trip_of_a_real_signature_and_negative_zero():
    sig = signature_from_rgb(np.full((30, 40, 3), 77, np.uint8))
    assert parse_hash(sig.hash).hash == sig.hash
    neg = Signature((0.5, -0.0, 0.0), sig.sig)
    assert parse_hash(neg.hash).hash == neg.hash
    assert "8000000000000000" in neg.hash
    assert neg != Signature((0.5, 0.0, 0.0), sig.sig)


@pytest.mark.parametrize("bad", [
    "",
    "iqdb_",
    "iqdc_" + "0" * 528,
    "iqdb_" + "0" * 527,
    "iqdb_" + "0" * 529,
    "iqdb_" + "g" * 528,
    "iqdb_" + "0" * 528,  # every coefficient index 0: impossible
])
def test_invalid_hashes(bad):
    with pytest.raises(InvalidHashError):
        parse_hash(bad)
    assert not is_hash(bad) or bad == "iqdb_" + "0" * 528


def test_not_a_string():
    with pytest.raises(InvalidHashError):
        parse_hash(b"iqdb_")  # type: ignore[arg-type]


def test_uppercase_is_accepted_but_written_lowercase():
    text = format_hash(_random_signature(1))
    assert parse_hash("iqdb_" + text[5:].upper()).hash == text
