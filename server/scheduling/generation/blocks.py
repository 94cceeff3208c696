"""The paged KV cache's bookkeeping: fixed-size blocks, reference counts and the prefix cache.

No device library here: a block is an integer; the model runner owns the memory behind it
(``block_size`` token slots of keys and values per layer).

- A sequence's **block table** lists the blocks that hold its positions in order
  (position p lives in ``table[p // block_size]``).
- A block is **full** once all its ``block_size`` tokens are computed. A full block is
  registered in the **prefix cache** under the hash of its tokens chained with the hash
  of the block before it, so two prompts that start alike find the same blocks.
- **Reference counts** let sequences share blocks. A freed block with no owners keeps its
  cached contents and goes to the back of an LRU list; it is reused (and forgotten by the
  cache) only when no never-cached block is left. So a common system prompt is computed
  once and stays while memory allows.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class _Key:
    parent: int  # the digest of the previous block's key (0 for the first block)
    tokens: tuple[int, ...]
    digest: int  # hash((parent, tokens)), computed once


def _key(parent: int, tokens: tuple[int, ...]) -> _Key:
    return _Key(parent, tokens, hash((parent, tokens)))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token, not {num_blocks} x {block_size}")
        self.num_blocks, self.block_size, self.prefix_caching = num_blocks, block_size, prefix_caching
        self._free: deque[int] = deque(range(num_blocks))  # never cached, or forgotten
        self._evictable: OrderedDict[int, None] = OrderedDict()  # ref 0, still cached (LRU first)
        self._refs = [0] * num_blocks
        self._key: dict[int, _Key] = {}  # block -> its key, while cached
        self._cached: dict[int, int] = {}  # key digest -> block

    # -- reading --------------------------------------------------------------------------
    def free_blocks(self) -> int:
        return len(self._free) + len(self._evictable)

    def usage(self) -> float:
        """Blocks owned by some sequence, as a fraction of all (cached free blocks count as free)."""
        return 1.0 - self.free_blocks() / self.num_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    # -- prefix cache ---------------------------------------------------------------------
    def match_prefix(self, tokens: Sequence[int]) -> list[int]:
        """The cached blocks holding the longest run of ``tokens``' full blocks, stopping
        so that at least one token is left to compute (its logits are needed). Takes a
        reference on each; the caller puts them at the head of the sequence's table."""
        if not self.prefix_caching:
            return []
        found: list[int] = []
        parent = 0
        size = self.block_size
        for start in range(0, len(tokens) - 1 - size + 1, size):
            key = _key(parent, tuple(tokens[start:start + size]))
            block = self._cached.get(key.digest)
            if block is None or self._key.get(block) != key:
                break
            found.append(block)
            parent = key.digest
        for block in found:
            self._take(block)
        return found

    def register(self, table: Sequence[int], tokens: Sequence[int], computed: int, start: int = 0,
                 parent: int = 0) -> tuple[int, int]:
        """Cache the full blocks among the first ``computed`` tokens, from block ``start``
        (whose predecessor's digest is ``parent``; the caller keeps both, so each block is
        hashed once). A block whose contents another block already caches stays private.
        Returns where the next call starts: the full blocks walked and the last digest."""
        size = self.block_size
        full = computed // size
        if not self.prefix_caching:
            return full, parent
        for index in range(start, full):
            block = table[index]
            key = self._key.get(block)
            if key is None:
                key = _key(parent, tuple(tokens[index * size:(index + 1) * size]))
                if key.digest not in self._cached:
                    self._cached[key.digest] = block
                    self._key[block] = key
            parent = key.digest
        return full, parent

    # -- allocation -----------------------------------------------------------------------
    def can_allocate(self, table: Sequence[int], tokens: int, reserve: int = 0) -> bool:
        return self.blocks_for(tokens) - len(table) + reserve <= self.free_blocks()

    def allocate(self, table: list[int], tokens: int, reserve: int = 0) -> bool:
        """Grow ``table`` to hold ``tokens`` positions; all or nothing. ``reserve`` blocks
        must stay free afterwards (a watermark for admitting new sequences)."""
        if not self.can_allocate(table, tokens, reserve):
            return False
        while len(table) < self.blocks_for(tokens):
            table.append(self._pop())
        return True

    def free(self, table: list[int]) -> None:
        """Drop one reference to each block of ``table`` (and empty it). A block nobody
        owns becomes reusable; a cached one keeps its contents until it is reused."""
        for block in reversed(table):  # the tail first: it is the least likely to be shared again
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if block in self._key:
                    self._evictable[block] = None
                else:
                    self._free.append(block)
        table.clear()

    def _take(self, block: int) -> None:
        if self._refs[block] == 0:
            self._evictable.pop(block, None)
        self._refs[block] += 1

    def _pop(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)
            key = self._key.pop(block)
            del self._cached[key.digest]
        self._refs[block] = 1
        return block
