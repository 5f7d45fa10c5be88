"""The in-memory index and the server's scoring (DESIGN.md section 4, "Weights", "Score").

The reference is :class:`iqdb_server.ServerIndex`, danbooru/iqdb's ``queryFromSignature`` transcribed
statement by statement from ``src/imgdb.cpp`` in float32 (channels outermost, then coefficients; the
DC term in float32 too) with the server's ``std::priority_queue``. The vectorised index must give the
same scores bit for bit, and the same top-k lists apart from the order among exactly equal scores.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from iqdb_server import ServerIndex
from PIL import Image, ImageOps

from mediaq.pure.iqdb.compute import compute_signature, signature_from_rgb
from mediaq.pure.iqdb.scoring import LocalIndex
from mediaq.pure.iqdb.signature import Signature

DATA = Path(__file__).resolve().parent.parent / "data"
PHOTOS = ["astronaut.jpg", "chelsea.png", "coffee.jpg", "hubble_deep_field.jpg", "retina.jpg", "rocket.jpg",
          "camera.png"]


def _ref_scores(entries: list[tuple[object, Signature]], q: Signature) -> dict[object, float]:
    """Every returnable image's score as the server computes it."""
    server, post_ids = _server_index(entries)
    return {post_ids[post_id]: score for post_id, score in server.query(q, -1)}


def _server_index(entries: list[tuple[object, Signature]]) -> tuple[ServerIndex, dict[int, object]]:
    server = ServerIndex()
    post_ids = {}
    for post_id, (image_id, sig) in enumerate(entries):
        server.add(post_id, sig)
        post_ids[post_id] = image_id
    return server, post_ids


def _thumb(name: str, box: tuple[int, int, int, int] | None = None, flip: bool = False) -> bytes:
    with Image.open(DATA / name) as im:
        im = im.convert("RGB")
        if box:
            im = im.crop(box)
        if flip:
            im = ImageOps.mirror(im)
        im.thumbnail((250, 200))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=87)
        return buf.getvalue()


@pytest.fixture(scope="module")
def photo_sigs() -> dict[str, Signature]:
    sigs = {name: compute_signature(_thumb(name)) for name in PHOTOS}
    for k, name in enumerate(PHOTOS[:5]):  # more, distinct, images: crops of different regions
        sigs[f"{name}#crop"] = compute_signature(_thumb(name, (k * 10, k * 10, 300 + k * 10, 260 + k * 10)))
    return sigs


def _index(sigs: dict[str, Signature], **kw: object) -> LocalIndex:
    index = LocalIndex(**kw)  # type: ignore[arg-type]
    for name, sig in sigs.items():
        index.add(name, sig)
    return index


def _generated(count: int, seed: int) -> list[Signature]:
    """Signatures of generated pictures: smooth colour fields with noise, some grey, some near-twins
    (small edits of one another, so that scores come close)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        if k % 5 == 0:
            base[:, :, 1:] = base[:, :, :1]
        img = np.asarray(Image.fromarray(base).resize((250, 190), Image.BICUBIC), dtype=np.int16)
        for _twin in range(1 + k % 3):
            noisy = np.clip(img + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
            out.append(signature_from_rgb(noisy))
    return out


def _assert_like_the_server(index: LocalIndex, entries: list[tuple[object, Signature]], queries: list[Signature]):
    server, post_ids = _server_index(entries)
    n = len(entries)
    for q in queries:
        want = [(post_ids[p], s) for p, s in server.query(q, -1)]
        got = index.query(q, limit=n)
        assert {m.image_id: m.score for m in got} == dict(want)  # bit for bit, every image
        for limit in (1, 2, 3, 5, 10):
            want_k = [(post_ids[p], s) for p, s in server.query(q, limit)]
            got_k = [(m.image_id, m.score) for m in index.query(q, limit=limit)]
            assert [s for _, s in got_k] == [s for _, s in want_k]
            tied = want_k[-1][1] if want_k else None  # which tied image is kept at the limit may differ
            assert {i for i, s in got_k if s != tied} == {i for i, s in want_k if s != tied}


def test_scores_are_the_servers_bit_for_bit_on_real_photos(photo_sigs):
    entries = list(photo_sigs.items())
    _assert_like_the_server(_index(photo_sigs), entries, [sig for _, sig in entries])


def test_scores_are_the_servers_bit_for_bit_on_generated_images():
    sigs = _generated(40, seed=14)
    entries = list(enumerate(sigs))
    index = LocalIndex()
    index.add_many(entries)
    _assert_like_the_server(index, entries, sigs[::3])


def test_self_match_is_100_and_best(photo_sigs):
    index = _index(photo_sigs)
    for name, sig in photo_sigs.items():
        top = index.query(sig, limit=3)
        assert top[0].image_id == name
        assert top[0].score == pytest.approx(100.0, abs=1e-4)
        assert top[0].hash == sig.hash
        assert all(m.score < 100 - 1e-3 for m in top[1:])
        assert len(top) == 3


def test_limit_and_bad_limit(photo_sigs):
    index = _index(photo_sigs)
    q = photo_sigs["coffee.jpg"]
    assert len(index.query(q, 1)) == 1
    assert len(index.query(q, 1000)) == len(photo_sigs)
    with pytest.raises(ValueError):
        index.query(q, 0)


def test_symmetric_when_coefficient_sets_are_equal(photo_sigs):
    """Same coefficients, different DC terms: W and M are the same both ways and D is symmetric."""
    a = photo_sigs["coffee.jpg"]
    b = Signature((a.avglf[0] * 0.9, a.avglf[1] + 0.01, a.avglf[2] - 0.02), a.sig)
    index = LocalIndex()
    index.add("a", a)
    index.add("b", b)
    ab = {m.image_id: m.score for m in index.query(a, 2)}["b"]
    ba = {m.image_id: m.score for m in index.query(b, 2)}["a"]
    assert ab == ba < 100


def test_disjoint_pair_scores_negative_and_identical_pair_ties_first_indexed_first(photo_sigs):
    a = photo_sigs["coffee.jpg"]
    far = np.tile(-np.arange(16383, 16343, -1, dtype=np.int16), (3, 1))  # the finest detail coefficients
    assert not set(far.reshape(-1).tolist()) & set(a.sig.reshape(-1).tolist())
    index = LocalIndex()
    index.add(1, a)
    index.add(2, Signature((a.avglf[0] + 0.3, a.avglf[1], a.avglf[2]), far))
    score = {m.image_id: m.score for m in index.query(a, 2)}[2]
    assert score < 0  # no common coefficient: only -D remains
    assert score == _ref_scores([(1, a), (2, index.get(2))], a)[2]
    twin = LocalIndex()
    twin.add("first", a)
    twin.add("second", a)
    first, second = twin.query(a, 2)
    assert (first.image_id, second.image_id) == ("first", "second") and first.score == second.score
    twin.add("first", a)  # a replaced id ranks as the newest, as on the server
    assert [m.image_id for m in twin.query(a, 2)] == ["second", "first"]


def test_grayscale_rule(photo_sigs):
    gray = photo_sigs["camera.png"]
    colour = photo_sigs["coffee.jpg"]
    assert gray.is_grayscale and not colour.is_grayscale
    # A colour image with the gray one's Y channel and DC but its own I/Q: a grayscale query
    # scores only Y, so it is a perfect match...
    hybrid = Signature((gray.avglf[0], 0.2, -0.1), np.stack([gray.sig[0], colour.sig[1], colour.sig[2]]))
    index = LocalIndex()
    index.add("hybrid", hybrid)
    assert index.query(gray, 1)[0].score == pytest.approx(100.0, abs=1e-4)
    # ...while the gray image is indexed with its Y coefficients only: a colour query holding the
    # gray image's hidden I/Q coefficients gains nothing from them.
    index = LocalIndex()
    index.add("gray", gray)
    probe = Signature((gray.avglf[0], 0.2, -0.1), np.stack([colour.sig[0], gray.sig[1], gray.sig[2]]))
    assert probe.num_colors == 3
    entries = [("gray", gray)]
    assert index.query(probe, 1)[0].score == _ref_scores(entries, probe)["gray"]
    assert index._counts.sum() == 40


def test_black_images_count_in_buckets_but_are_never_returned():
    black = signature_from_rgb(np.zeros((40, 40, 3), np.uint8))
    assert black.avglf[0] == 0.0
    other = signature_from_rgb(np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    index = LocalIndex()
    index.add("black", black)
    assert index.query(black, 5) == []
    index.add("other", other)
    got = index.query(black, 5)
    assert [m.image_id for m in got] == ["other"]
    expected = _ref_scores([("black", black), ("other", other)], black)
    assert got[0].score == expected["other"]
    # W includes the black image's buckets: without it they are empty and W is 0.
    alone = LocalIndex()
    alone.add("other", other)
    assert alone.query(black, 5)[0].score != got[0].score


def test_remove_and_replace(photo_sigs):
    index = _index(photo_sigs)
    q = photo_sigs["rocket.jpg"]
    assert index.remove("rocket.jpg") and not index.remove("rocket.jpg")
    assert "rocket.jpg" not in index and len(index) == len(photo_sigs) - 1
    got = index.query(q, 100)
    assert "rocket.jpg" not in [m.image_id for m in got]
    rest = [(k, v) for k, v in photo_sigs.items() if k != "rocket.jpg"]
    assert {m.image_id: m.score for m in got} == _ref_scores(rest, q)
    index.add("chelsea.png", q)  # replace: the id now holds the rocket's signature
    assert index.query(q, 1)[0].image_id == "chelsea.png"
    assert index.get("chelsea.png") == q and index.get("nope") is None


def test_rebuilds_and_tombstones_do_not_change_results(photo_sigs):
    """Many small batches with removals, forcing rebuilds and compactions, give exactly the same
    results as one fresh index."""
    rng = np.random.default_rng(5)
    small = LocalIndex(rebuild_fraction=0.1, min_rebuild=3)
    names = list(photo_sigs)
    for _step in range(40):
        name = names[int(rng.integers(len(names)))]
        if rng.random() < 0.3:
            small.remove(name)
        else:
            small.add(name, photo_sigs[name])
    fresh = LocalIndex()
    for name in small.ids():
        fresh.add(name, small.get(name))  # type: ignore[arg-type]
    for q in list(photo_sigs.values())[:5]:
        a = small.query(q, 20)
        b = fresh.query(q, 20)
        assert [(m.image_id, m.score) for m in a] == [(m.image_id, m.score) for m in b]


def test_mirror_option_finds_flipped_copies():
    index = LocalIndex()
    for name in PHOTOS:
        index.add(name, compute_signature(_thumb(name)))
    found_plain = found_mirror = 0
    for name in PHOTOS:
        flipped = compute_signature(_thumb(name, flip=True))
        found_plain += index.query(flipped, 1)[0].image_id == name
        top = index.query(flipped, 3, mirror=True)
        found_mirror += top[0].image_id == name
        assert top[0].score > 90 and top[0].mirrored
        assert len({m.image_id for m in top}) == len(top)
    assert found_mirror == len(PHOTOS) and found_plain < len(PHOTOS)


def test_find_duplicates(photo_sigs):
    index = LocalIndex()
    for name in PHOTOS:
        index.add(name, photo_sigs[name])
        with Image.open(io.BytesIO(_thumb(name))) as im:
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=40)  # a re-encoded copy
        index.add(name + "#copy", compute_signature(buf.getvalue()))
    pairs = index.find_duplicates(90.0)
    assert sorted((a, b) for a, b, _ in pairs) == sorted((n, n + "#copy") for n in PHOTOS)
    assert all(s >= 90 for *_, s in pairs)
    assert [s for *_, s in pairs] == sorted((s for *_, s in pairs), reverse=True)
    assert index.find_duplicates(100.5) == []


def test_merge_mirrored():
    from mediaq.pure.iqdb.scoring import Match, merge_mirrored

    plain = [Match("a", 60.0, "ha"), Match("b", 50.0, "hb")]
    flipped = [Match("c", 65.0, "hc"), Match("b", 95.0, "hb"), Match("a", 10.0, "ha")]
    merged = merge_mirrored(plain, flipped, 3)
    assert [(m.image_id, m.score, m.mirrored) for m in merged] == [("b", 95.0, True), ("c", 65.0, True),
                                                                   ("a", 60.0, False)]
    # with a margin, a mirrored match must beat the plain ones by that much to rank above them
    merged = merge_mirrored(plain, flipped, 2, margin=10)
    assert [(m.image_id, m.score, m.mirrored) for m in merged] == [("b", 95.0, True), ("a", 60.0, False)]
    assert merge_mirrored(plain, [], 5) == plain
