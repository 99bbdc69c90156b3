"""The pool of KV-cache blocks: reference counts, a free queue in eviction order, and the prefix-cache index.

Block 0 is the null block: it is never handed out and fills block-table entries that hold nothing (the slots of
a sliding-window layer that fell out of its window). A block whose reference count drops to zero goes to the tail
of the free queue but keeps its hash, so a later request with the same prefix can take it back; allocation takes
from the head, evicting the least recently freed block from the index.
"""

from collections import OrderedDict
from dataclasses import dataclass

NULL_BLOCK = 0


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None  # set while the block is in the prefix-cache index
    group: int = 0  # the KV-cache group whose index holds the hash


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool = True):
        if num_blocks < 2:
            raise ValueError(f"the KV cache needs at least 2 blocks (one is the null block), got {num_blocks}")
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.blocks[NULL_BLOCK].ref_count = 1  # never freed
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(1, num_blocks))  # head = evict next
        self.cached: dict[tuple[int, bytes], int] = {}  # (group, block hash) -> block id
        self.enable_caching = enable_caching

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self.free)

    def usage(self) -> float:
        """Fraction of the usable blocks held by requests (cached free blocks count as free)."""
        return 1.0 - self.num_free / (self.num_blocks - 1)

    def allocate(self, n: int) -> list[int]:
        """Take n blocks from the head of the free queue (evicting their cached hashes); all or nothing."""
        if n > len(self.free):
            raise MemoryError(f"asked for {n} KV blocks, {len(self.free)} free")
        ids = []
        for _ in range(n):
            block_id, _ = self.free.popitem(last=False)
            block = self.blocks[block_id]
            self._uncache(block)
            block.ref_count = 1
            ids.append(block_id)
        return ids

    def touch(self, block_ids: list[int]) -> None:
        """Take another reference to blocks (a prefix-cache hit), pulling free ones out of the free queue."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1

    def release(self, block_ids: list[int]) -> None:
        """Drop one reference to each block; blocks reaching zero join the free queue in the order given."""
        for block_id in block_ids:
            if block_id == NULL_BLOCK:
                continue
            block = self.blocks[block_id]
            if block.ref_count <= 0:
                raise RuntimeError(f"block {block_id} released more often than it was taken")
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None

    # ---- prefix-cache index ----
    def lookup(self, group: int, block_hash: bytes) -> int | None:
        return self.cached.get((group, block_hash)) if self.enable_caching else None

    def cache(self, group: int, block_id: int, block_hash: bytes) -> None:
        """Index a full block under its prefix hash (a duplicate of an indexed hash stays unindexed)."""
        block = self.blocks[block_id]
        if not self.enable_caching or block.block_hash is not None or (group, block_hash) in self.cached:
            return
        block.block_hash, block.group = block_hash, group
        self.cached[(group, block_hash)] = block_id

    def _uncache(self, block: Block) -> None:
        if block.block_hash is not None:
            del self.cached[(block.group, block.block_hash)]
            block.block_hash = None

    def reset_prefix_cache(self) -> None:
        for block in self.blocks:
            if block.ref_count == 0:
                self._uncache(block)
