"""RFC 9162 Merkle hashing: the iterative implementation against a naive recursive transcription
of the RFC's definitions, and property tests of inclusion and consistency proofs."""

from __future__ import annotations

import hashlib

from chargemesh.streams import merkle
from hypothesis import given, settings
from hypothesis import strategies as st

# ---- the RFC's definitions, transcribed literally (recursive, slicing) ------------------------

def ref_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def leaves_of(n: int) -> list[bytes]:
    return [f"record-{i}".encode() for i in range(n)]


def hashes(d: list[bytes]) -> list[bytes]:
    return [merkle.leaf_hash(x) for x in d]


# ---- known answers -------------------------------------------------------------------------

def test_empty_and_single_leaf_heads_are_the_rfc_constants() -> None:
    assert merkle.tree_root([]).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")  # SHA-256("")
    assert merkle.tree_root([b""]).hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")  # SHA-256(0x00)


def test_three_leaf_tree_is_built_by_hand() -> None:
    a, b, c = (merkle.leaf_hash(x) for x in (b"a", b"b", b"c"))
    by_hand = hashlib.sha256(b"\x01" + hashlib.sha256(b"\x01" + a + b).digest() + c).digest()
    assert merkle.tree_root([b"a", b"b", b"c"]) == by_hand
    assert merkle.inclusion_proof([a, b, c], 2) == [hashlib.sha256(b"\x01" + a + b).digest()]
    assert merkle.inclusion_proof([a, b, c], 0) == [b, c]


def test_heads_paths_and_proofs_equal_the_reference_for_every_size_to_40() -> None:
    for n in range(1, 41):
        d = leaves_of(n)
        h = hashes(d)
        assert merkle.subtree_root(h) == ref_mth(d), n
        for m in range(n):
            assert merkle.inclusion_proof(h, m) == ref_path(m, d), (n, m)
        for m in range(1, n + 1):
            assert merkle.consistency_proof(h, m) == ref_subproof(m, d, True), (m, n)


# ---- properties ----------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=300)


@settings(max_examples=60, deadline=None)
@given(n=sizes, data=st.data())
def test_every_leafs_proof_verifies_and_a_tampered_leaf_or_proof_fails(
        n: int, data: st.DataObject) -> None:
    d = leaves_of(n)
    h = hashes(d)
    root = merkle.subtree_root(h)
    m = data.draw(st.integers(0, n - 1))
    proof = merkle.inclusion_proof(h, m)
    assert len(proof) <= max(1, (n - 1).bit_length())
    assert merkle.verify_inclusion(d[m], m, n, proof, root)
    flipped = bytearray(d[m])
    flipped[data.draw(st.integers(0, len(flipped) - 1))] ^= 0x01
    assert not merkle.verify_inclusion(bytes(flipped), m, n, proof, root)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 0x80]) + bad[i][1:]
        assert not merkle.verify_inclusion(d[m], m, n, bad, root)
        assert not merkle.verify_inclusion(d[m], m, n, proof[:-1], root)
    if n > 1:
        other = (m + 1) % n
        assert not merkle.verify_inclusion(d[m], other, n, proof, root) or d[m] == d[other]


@settings(max_examples=60, deadline=None)
@given(n=sizes, data=st.data())
def test_consistency_between_random_sizes_verifies_and_a_rewritten_history_fails(
        n: int, data: st.DataObject) -> None:
    d = leaves_of(n)
    h = hashes(d)
    m = data.draw(st.integers(1, n))
    old_root, new_root = merkle.subtree_root(h, 0, m), merkle.subtree_root(h)
    proof = merkle.consistency_proof(h, m)
    assert merkle.verify_consistency(m, n, old_root, new_root, proof)
    # The same sizes over a history in which one old record was changed.
    j = data.draw(st.integers(0, m - 1))
    forged = list(d)
    forged[j] = b"rewritten"
    forged_root = merkle.tree_root(forged)
    assert not merkle.verify_consistency(m, n, old_root, forged_root, proof)
    if proof and m < n:
        bad = list(proof)
        bad[0] = hashlib.sha256(bad[0]).digest()
        assert not merkle.verify_consistency(m, n, old_root, new_root, bad)


def test_proofs_outside_the_tree_are_refused() -> None:
    h = hashes(leaves_of(5))
    for index in (-1, 5):
        try:
            merkle.inclusion_proof(h, index)
        except merkle.MerkleError:
            continue
        raise AssertionError(f"a proof for leaf {index} of 5")
    assert not merkle.verify_inclusion(b"x", 0, 0, [], merkle.EMPTY_ROOT)
    assert not merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, merkle.subtree_root(h), [])
