"""Merkle-tree hashing of a log, RFC 9162 (Certificate Transparency v2) section 2.1. Pure.

A log partition's records, in offset order, are the leaves ``D[0:n]``. Its tree head is

    MTH({})    = SHA-256()
    MTH({d0})  = SHA-256(0x00 || d0)                                  (leaf hash)
    MTH(D[n])  = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))          (node hash)

with ``k`` the largest power of two smaller than ``n``. An inclusion proof (``PATH``) shows that a
leaf is the ``m``-th of a tree with a given head; a consistency proof shows that the tree of size
``m`` is a prefix of the tree of size ``n`` (the log was only appended to). Verification follows
RFC 9162 2.1.3.2 and 2.1.4.2 exactly and never trusts the sizes it is given beyond
``TREE_SIZE_MAX``.

Generation works on leaf *hashes* (32 bytes each, computed once) and walks the tree with loops,
not recursion: proof size is at most ``ceil(log2(n))`` hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_BYTES = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
# 2**62 leaves: far beyond any log, small enough that sizes never overflow a signed long.
TREE_SIZE_MAX = 2**62
PROOF_HASHES_MAX = 64
EMPTY_ROOT = hashlib.sha256(b"").digest()


class MerkleError(ValueError):
    """A proof was asked for outside the tree, or a proof is malformed."""


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    if n < 2:
        raise MerkleError(f"no split of a tree of size {n}")
    return 1 << ((n - 1).bit_length() - 1)


def subtree_root(hashes: Sequence[bytes], lo: int = 0, hi: int | None = None) -> bytes:
    """MTH of the leaves whose hashes are ``hashes[lo:hi]``.

    Iterative: the RFC tree over ``n`` leaves is the perfect subtrees of ``n``'s binary digits,
    left to right, folded from the right. A stack of (size, hash) merges equal neighbours.
    """
    end = len(hashes) if hi is None else hi
    if not 0 <= lo <= end <= len(hashes):
        raise MerkleError(f"range [{lo}, {end}) outside {len(hashes)} leaves")
    if lo == end:
        return EMPTY_ROOT
    stack: list[tuple[int, bytes]] = []
    for index in range(lo, end):
        size, digest = 1, hashes[index]
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            size, digest = left_size + size, node_hash(left, digest)
        stack.append((size, digest))
    root = stack[-1][1]
    for _, left in reversed(stack[:-1]):
        root = node_hash(left, root)
    return root


def tree_root(leaves: Sequence[bytes]) -> bytes:
    """MTH of raw leaves (hashes them first)."""
    return subtree_root([leaf_hash(leaf) for leaf in leaves])


def inclusion_proof(hashes: Sequence[bytes], index: int,
                    tree_size: int | None = None) -> list[bytes]:
    """PATH(index, D[tree_size]): sibling subtree roots, from the leaf up to the root."""
    n = len(hashes) if tree_size is None else tree_size
    if not 0 <= index < n <= len(hashes):
        raise MerkleError(f"leaf {index} is not in a tree of size {n}")
    lo, hi, outer_first = 0, n, []
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            outer_first.append(subtree_root(hashes, lo + k, hi))
            hi = lo + k
        else:
            outer_first.append(subtree_root(hashes, lo, lo + k))
            lo += k
    return outer_first[::-1]


def consistency_proof(hashes: Sequence[bytes], old_size: int,
                      new_size: int | None = None) -> list[bytes]:
    """PROOF(old_size, D[new_size]) (RFC 9162 2.1.4.1); empty when the sizes are equal."""
    n = len(hashes) if new_size is None else new_size
    if not 0 < old_size <= n <= len(hashes):
        raise MerkleError(f"no consistency proof from {old_size} to {n}")
    m, lo, hi, complete = old_size, 0, n, True
    outer_first: list[bytes] = []
    while True:
        if m == hi - lo:
            if not complete:
                outer_first.append(subtree_root(hashes, lo, hi))
            break
        k = split_point(hi - lo)
        if m <= k:
            outer_first.append(subtree_root(hashes, lo + k, hi))
            hi = lo + k
        else:
            outer_first.append(subtree_root(hashes, lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    return outer_first[::-1]


def _shift_while_even(fn: int, sn: int) -> tuple[int, int]:
    while fn and not fn & 1:
        fn, sn = fn >> 1, sn >> 1
    return fn, sn


def _check_proof_shape(proof: Sequence[bytes], size: int) -> None:
    if not 0 <= size <= TREE_SIZE_MAX:
        raise MerkleError(f"tree size {size} out of range")
    if len(proof) > PROOF_HASHES_MAX or any(len(p) != HASH_BYTES for p in proof):
        raise MerkleError("malformed proof")


def verify_inclusion(leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes],
                     root: bytes) -> bool:
    """RFC 9162 2.1.3.2: ``leaf`` is the ``index``-th leaf of the tree of ``tree_size``/``root``."""
    return verify_inclusion_hash(leaf_hash(leaf), index, tree_size, proof, root)


def verify_inclusion_hash(leaf_digest: bytes, index: int, tree_size: int,
                          proof: Sequence[bytes], root: bytes) -> bool:
    try:
        _check_proof_shape(proof, tree_size)
    except MerkleError:
        return False
    if not 0 <= index < tree_size:
        return False
    fn, sn, r = index, tree_size - 1, leaf_digest
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            fn, sn = _shift_while_even(fn, sn)
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2: tree ``old_size``/``old_root`` is a prefix of ``new_size``/``new_root``."""
    try:
        _check_proof_shape(proof, new_size)
    except MerkleError:
        return False
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node of the new tree
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            fn, sn = _shift_while_even(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == old_root and sr == new_root and sn == 0
