"""The paged KV cache: fixed-size blocks of token positions, per-sequence block tables, refcounts.

Per layer, keys and values live in a pool [num_blocks, kv_heads, block_size, head_dim]. A sequence
owns a block table (a list of block ids): position p of the sequence is row p % block_size of block
table[p // block_size]. Blocks are handed out on demand as a sequence grows and given back when it
ends, so the memory in use follows the tokens in use, whatever the lengths of the other sequences.

Sharing: `fork` gives a new sequence the same blocks (each block's refcount goes up): the n samples
of one request hold their prompt once. A block is written only by a sequence that owns it alone:
`reserve` copies a shared block before a write into it (copy-on-write; with a shared prompt that is
at most the partially filled last block, once per sample).

Memory: on CPU the pool is an anonymous memory map, which the OS fills with zeros page by page on
first touch, and free blocks are handed out lowest id first; so the process's resident KV memory is
the high-water mark of blocks in use, not the whole budget, and never-written rows read as zeros
(finite: a masked-out score times a value stays 0). Elsewhere the pool is allocated zeroed at once.
"""
from __future__ import annotations

import heapq
import mmap

import torch

from .config import Phi3Config

BLOCK_SIZE = 16  # tokens per block: the decode-attention kernel's tile, and vLLM's default


class BlockAllocator:
    """Block ids 0..num_blocks-1 with refcounts; lowest free id first (keeps the touched pool compact)."""

    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"a KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.refs = [0] * num_blocks
        self._free = list(range(num_blocks))  # a heap (sorted is one)
        self.peak_used = 0  # most blocks in use at once
        self.high_water = 0  # highest block id ever handed out, plus one

    def num_free(self) -> int:
        return len(self._free)

    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise MemoryError("no free KV cache block")  # callers check num_free() first
        block = heapq.heappop(self._free)
        self.refs[block] = 1
        self.peak_used = max(self.peak_used, self.num_used())
        self.high_water = max(self.high_water, block + 1)
        return block

    def share(self, block: int) -> None:
        if self.refs[block] < 1:
            raise ValueError(f"block {block} is not in use")
        self.refs[block] += 1

    def release(self, block: int) -> None:
        if self.refs[block] < 1:
            raise ValueError(f"block {block} is already free")
        self.refs[block] -= 1
        if self.refs[block] == 0:
            heapq.heappush(self._free, block)


class PagedKVCache:
    """Per-layer pools `k`, `v` [num_blocks, kv_heads, block_size, head_dim], a BlockAllocator, and the
    operations on block tables (plain lists of block ids that the sequences own)."""

    def __init__(self, config: Phi3Config, num_blocks: int, block_size: int = BLOCK_SIZE,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.block_size, self.num_blocks = block_size, num_blocks
        self.allocator = BlockAllocator(num_blocks)
        shape = (num_blocks, config.num_key_value_heads, block_size, config.head_dim)
        layers = config.num_hidden_layers
        device = torch.device(device)
        if device.type == "cpu":
            per = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            # One map for all layers, each layer's k and v a contiguous view of it.
            self._map = mmap.mmap(-1, 2 * layers * per)
            flat = torch.frombuffer(self._map, dtype=dtype)
            pools = flat.view(2 * layers, *shape)
        else:
            pools = torch.zeros(2 * layers, *shape, dtype=dtype, device=device)
        self.k = [pools[i] for i in range(layers)]
        self.v = [pools[layers + i] for i in range(layers)]

    # ---- sizes
    def bytes_per_block(self) -> int:
        return sum(t[0].numel() * t.element_size() for t in self.k + self.v)

    def nbytes(self) -> int:
        """The whole pool (the budget)."""
        return self.bytes_per_block() * self.num_blocks

    def num_free(self) -> int:
        return self.allocator.num_free()

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    # ---- block tables
    def needed(self, table: list[int], position: int) -> int:
        """Blocks `reserve(table, position)` would take: 1 for a new block or a copy of a shared one, else 0."""
        b = position // self.block_size
        if b < len(table):
            return int(self.allocator.refs[table[b]] > 1)
        return b + 1 - len(table)

    def reserve(self, table: list[int], position: int, copies: list[tuple[int, int]] | None = None) -> None:
        """Make `table` cover positions 0..position with the block of `position` owned by this table
        alone: new blocks are appended; a shared block is replaced by a copy, done at once or, with
        `copies`, appended there as (src, dst) for `copy_blocks` (one copy per layer for many)."""
        b = position // self.block_size
        if self.needed(table, position) > self.num_free():
            raise MemoryError(f"the KV cache has {self.num_free()} free blocks, {self.needed(table, position)} needed")
        while len(table) <= b:
            table.append(self.allocator.allocate())
        old = table[b]
        if self.allocator.refs[old] > 1:
            new = self.allocator.allocate()
            self.allocator.release(old)
            table[b] = new
            if copies is None:
                self.copy_blocks([(old, new)])
            else:
                copies.append((old, new))

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        if not pairs:
            return
        device = self.k[0].device
        src = torch.tensor([s for s, _ in pairs], device=device)
        dst = torch.tensor([d for _, d in pairs], device=device)
        for t in self.k + self.v:
            t.index_copy_(0, dst, t.index_select(0, src))

    def fork(self, table: list[int]) -> list[int]:
        """A new table sharing every block of `table` (another sample of the same prompt)."""
        for block in table:
            self.allocator.share(block)
        return list(table)

    def free(self, table: list[int]) -> None:
        """Give back a sequence's blocks (shared ones stay with their other owners); empties `table`."""
        for block in table:
            self.allocator.release(block)
        table.clear()

    def tables_tensor(self, tables: list[list[int]], device=None) -> torch.Tensor:
        """[B, max blocks] int64, short tables padded with block 0 (never read: past every length)."""
        width = max(1, max(len(t) for t in tables))
        return torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int64,
                            device=device or self.k[0].device)
