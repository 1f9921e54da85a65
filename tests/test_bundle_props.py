"""Properties of the canonical encoding and the manifest (`engine.bundle`), with hypothesis.

One value, one encoding: key order, how a float was computed, CRLF or CR versus LF, and
NFC versus NFD never change the bytes or the digest. Manifests round-trip through their
bytes, and distinct manifests never share a root digest.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.bundle import (
    Manifest,
    canonical_bytes,
    leaf_digest,
    node_digest,
)
from engine.errors import BundleError

# Deadlines measure the machine, not the code: the suite shares CPUs with other work.
PROPS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text without lone surrogates (refused by design, tested on their own below).
chars = st.characters(exclude_categories=["Cs"])
text = st.text(chars, max_size=12)


def _norm(value: str) -> str:
    return unicodedata.normalize("NFC", value.replace("\r\n", "\n").replace("\r", "\n"))


# Keys already in canonical form, so that distinct keys stay distinct after normalisation.
keys = text.map(_norm)
finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers() | finite | text


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4)


values = st.recursive(scalars, _containers, max_leaves=24)


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """`value` with `fn` applied to every string, keys included."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {fn(k): _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


def _reverse_keys(value: Any) -> Any:
    """The same data with every object's keys inserted in reverse order."""
    if isinstance(value, dict):
        return {k: _reverse_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reverse_keys(v) for v in value]
    return value


def _normalised(value: Any) -> Any:
    """What the encoding is meant to preserve: strings normalised, -0.0 as 0.0."""
    if isinstance(value, float) and value == 0.0:
        return 0.0
    if isinstance(value, str):
        return _norm(value)
    if isinstance(value, dict):
        return {_norm(k): _normalised(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


def _same_json(a: Any, b: Any) -> bool:
    """Equal including types (True is not 1, 1.0 is not 1) and the sign of zero."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


# ---- canonical encoding -----------------------------------------------------------------


@PROPS
@given(values)
def test_key_order_does_not_matter(value: Any) -> None:
    assert canonical_bytes(_reverse_keys(value)) == canonical_bytes(value)


@PROPS
@given(values)
def test_crlf_and_cr_encode_like_lf(value: Any) -> None:
    lf = canonical_bytes(value)
    assert canonical_bytes(_map_strings(value, lambda s: s.replace("\n", "\r\n"))) == lf
    assert canonical_bytes(_map_strings(value, lambda s: s.replace("\n", "\r"))) == lf
    assert b"\r" not in lf  # a CR would be escaped; none is left to escape
    assert b"\\r" not in lf.replace(b"\\\\", b"")


@PROPS
@given(values)
def test_nfc_and_nfd_give_one_digest(value: Any) -> None:
    nfc = _map_strings(value, lambda s: unicodedata.normalize("NFC", s))
    nfd = _map_strings(value, lambda s: unicodedata.normalize("NFD", s))
    assert leaf_digest(canonical_bytes(nfd)) == leaf_digest(canonical_bytes(nfc))
    assert canonical_bytes(nfd) == canonical_bytes(value)


@PROPS
@given(finite)
def test_a_float_is_its_shortest_round_trip_repr(x: float) -> None:
    encoded = canonical_bytes(x)
    assert encoded == repr(x + 0.0).encode()  # + 0.0 turns -0.0 into 0.0
    back = json.loads(encoded)
    assert type(back) is float
    assert back == x


@PROPS
@given(finite, finite)
def test_equal_floats_encode_alike_however_computed(a: float, b: float) -> None:
    # 0.1 + 0.2 written out, or computed: the float is the same, so are the bytes
    total = a + b
    if math.isfinite(total):
        assert canonical_bytes(total) == canonical_bytes(float(repr(total)))
        assert canonical_bytes([total]) == b"[" + repr(total + 0.0).encode() + b"]"


def test_float_rules_at_the_edges() -> None:
    assert canonical_bytes(-0.0) == canonical_bytes(0.0) == b"0.0"
    assert canonical_bytes(0.1 + 0.2) == b"0.30000000000000004"
    assert canonical_bytes(1.0) == b"1.0"
    assert canonical_bytes(1) == b"1"
    assert canonical_bytes(1e16) == b"1e+16"
    assert canonical_bytes(5e-324) == b"5e-324"
    assert canonical_bytes(True) == b"true"
    assert canonical_bytes(None) == b"null"
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(BundleError, match="no canonical JSON form"):
            canonical_bytes({"a": [bad]})


@PROPS
@given(values)
def test_encoding_round_trips_and_is_a_fixed_point(value: Any) -> None:
    encoded = canonical_bytes(value)
    decoded = json.loads(encoded.decode("utf-8"))
    assert _same_json(decoded, _normalised(value))
    assert canonical_bytes(decoded) == encoded
    assert b"\n" not in encoded  # newlines inside strings are escaped; none between tokens


@PROPS
@given(st.dictionaries(keys, st.integers(), min_size=2, max_size=6))
def test_keys_are_sorted_by_code_point(value: dict[str, int]) -> None:
    decoded = json.loads(canonical_bytes(value), object_pairs_hook=lambda pairs: pairs)
    assert [k for k, _ in decoded] == sorted(value)


def test_what_has_no_canonical_form_is_refused_with_its_place() -> None:
    with pytest.raises(BundleError, match=r"/a/1: a set"):
        canonical_bytes({"a": [1, {2}]})
    with pytest.raises(BundleError, match="not a string"):
        canonical_bytes({1: "x"})
    with pytest.raises(BundleError, match="two keys normalise"):
        canonical_bytes({"e\u0301": 1, "\u00e9": 2})
    with pytest.raises(BundleError, match="two keys normalise"):
        canonical_bytes({"a\r\n": 1, "a\n": 2})
    with pytest.raises(BundleError, match="lone surrogate"):
        canonical_bytes("\ud800")
    with pytest.raises(BundleError, match="bytes"):
        canonical_bytes(b"raw")


# ---- manifests --------------------------------------------------------------------------

segment = st.text(alphabet="abcxyz019_-.", min_size=1, max_size=6).filter(
    lambda s: s not in (".", "..")
)
paths = st.lists(segment, min_size=1, max_size=3).map("/".join)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    members = draw(st.dictionaries(paths, st.binary(max_size=24), max_size=5))
    # a path may not also be a folder of another path
    kept = {
        p: data for p, data in members.items() if not any(q.startswith(p + "/") for q in members)
    }
    run = draw(st.none() | st.from_regex(r"[a-z0-9][a-z0-9-]{0,11}", fullmatch=True))
    return Manifest.from_members(kept, run=run)


@PROPS
@given(manifests())
def test_manifest_round_trips_through_its_bytes(m: Manifest) -> None:
    data = m.to_bytes()
    again = Manifest.parse(data)
    assert again == m
    assert again.root_digest() == m.root_digest() == node_digest(data)


@settings(PROPS, max_examples=200)
@given(st.lists(manifests(), min_size=2, max_size=8))
def test_distinct_manifests_never_share_a_root_digest(ms: list[Manifest]) -> None:
    by_digest: dict[str, Manifest] = {}
    for m in ms:
        seen = by_digest.setdefault(m.root_digest(), m)
        assert seen == m, "two different manifests have one root digest"


@PROPS
@given(manifests(), st.data())
def test_any_change_to_a_member_changes_the_root(m: Manifest, data: st.DataObject) -> None:
    if not m.members:
        return
    members = {p: p.encode() * 2 for p in m.paths}
    base = Manifest.from_members(members, run=m.run)
    victim = data.draw(st.sampled_from(base.paths))
    changed = dict(members)
    changed[victim] = members[victim] + b"!"
    assert Manifest.from_members(changed, run=m.run).root_digest() != base.root_digest()


@PROPS
@given(st.binary(max_size=64))
def test_leaves_and_nodes_are_kept_apart(data: bytes) -> None:
    assert leaf_digest(data) != node_digest(data)
