"""The engine's plan for one iteration: which sequences run, and how many of their tokens.

No device library here (tested with hand-made step outputs). Each iteration:

1. **Running sequences first**, best priority first (lower ``priority`` value, then
   arrival): a decoding sequence computes its one newest token; a sequence still in its
   prompt computes the next chunk of it (chunked prefill), all under
   ``max_batched_tokens``. A sequence that needs a new block when none is free preempts
   the worst running sequence (its blocks are freed and it is recomputed later; vLLM's
   recompute mode), itself if it is the worst.
2. **Waiting sequences join** while the token budget, ``max_seqs`` and the free blocks
   (less a small watermark) allow, taking what the prefix cache already holds of their
   prompt. A waiting sequence of better priority than a running one preempts it when the
   batch is full (no slot or no block); no other sequence joins in an iteration that
   preempted for lack of memory.

After the runner has run the plan, :meth:`Planner.account` advances each sequence by the
tokens it computed, appends the token sampled for it (when its logits were the last
position's), caches its full blocks, and the engine retires finished sequences with
:meth:`Planner.finish`, so new ones join in the very next iteration.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum

from server.scheduling.generation.blocks import BlockManager


class State(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_ids = itertools.count()


@dataclass(eq=False, slots=True)
class Seq:
    """One sequence: a prompt and what has been generated after it."""

    prompt: list[int]
    max_tokens: int  # output tokens at most
    priority: int = 0  # lower runs first (vLLM's convention)
    arrival: float = 0.0
    output: list[int] = field(default_factory=list)
    table: list[int] = field(default_factory=list)  # block table
    computed: int = 0  # tokens whose keys and values are in the cache
    cached_tokens: int = 0  # prompt tokens the prefix cache held at first admission
    admitted: bool = False
    preemptions: int = 0
    hashed_blocks: int = 0  # full blocks the prefix cache has seen (where the next registration starts)
    hash_parent: int = 0  # the digest of the last of them
    state: State = State.WAITING
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output if self.output else self.prompt

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.output)

    def span(self, start: int, count: int) -> list[int]:
        """``tokens[start:start + count]`` without joining prompt and output (a decode step
        reads only the newest token)."""
        cut = len(self.prompt)
        if start >= cut:
            return self.output[start - cut:start - cut + count]
        return (self.prompt + self.output)[start:start + count]

    def rank(self) -> tuple[int, float, int]:
        return (self.priority, self.arrival, self.id)


@dataclass(frozen=True, slots=True)
class Work:
    """One sequence's share of an iteration: ``count`` tokens from position ``start``."""

    seq: Seq
    start: int
    count: int

    @property
    def samples(self) -> bool:
        """Whether this work reaches the sequence's newest token (its logits are sampled)."""
        return self.start + self.count == self.seq.length


@dataclass(frozen=True, slots=True)
class Plan:
    work: tuple[Work, ...]
    preempted: tuple[Seq, ...]
    admitted: tuple[Seq, ...]  # joined the batch this iteration (for the first time or again)

    @property
    def tokens(self) -> int:
        return sum(w.count for w in self.work)


@dataclass(frozen=True, slots=True)
class Budget:
    max_batched_tokens: int = 512  # tokens computed per iteration (prefill chunks + decodes)
    max_seqs: int = 64  # sequences running at once
    watermark_blocks: int = 1  # free blocks a newly admitted sequence must leave


class Planner:
    def __init__(self, blocks: BlockManager, budget: Budget) -> None:
        self.blocks, self.budget = blocks, budget
        self.waiting: list[Seq] = []  # kept sorted by rank
        self.running: list[Seq] = []
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0

    def add(self, seq: Seq) -> None:
        seq.state = State.WAITING
        self._enqueue(seq)

    def schedule(self) -> Plan:
        budget = self.budget.max_batched_tokens
        work: list[Work] = []
        preempted: list[Seq] = []
        self.running.sort(key=Seq.rank)
        scheduled: set[int] = set()
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.state is not State.RUNNING:  # preempted by an earlier one in this loop
                continue
            count = min(seq.length - seq.computed, budget)
            while not self.blocks.allocate(seq.table, seq.computed + count):
                victim = self._worst_running(exclude=scheduled)
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if seq.state is State.RUNNING:
                work.append(Work(seq, seq.computed, count))
                scheduled.add(seq.id)
                budget -= count
        admitted: list[Seq] = []
        out_of_memory = bool(preempted)
        while self.waiting and budget > 0 and not out_of_memory:
            seq = self.waiting[0]
            if len(self.running) >= self.budget.max_seqs and not self._make_room(seq, scheduled, work, preempted):
                break
            placed = self._admit(seq, budget, scheduled, work, preempted)
            if placed is None:
                break
            work.append(placed)
            admitted.append(seq)
            scheduled.add(seq.id)
            budget -= placed.count
        return Plan(tuple(w for w in work if w.seq.state is State.RUNNING), tuple(preempted), tuple(admitted))

    def account(self, plan: Plan, sampled: dict[int, int]) -> None:
        """Advance the plan's sequences: ``sampled`` maps a sequence id to the token drawn
        from its logits (only for work that ``samples``)."""
        for w in plan.work:
            seq = w.seq
            if seq.state is not State.RUNNING:
                continue
            seq.computed = w.start + w.count
            token = sampled.get(seq.id)
            if token is not None:
                seq.output.append(token)
            if seq.computed // self.blocks.block_size > seq.hashed_blocks:  # a block filled up
                seq.hashed_blocks, seq.hash_parent = self.blocks.register(
                    seq.table, seq.tokens, seq.computed, seq.hashed_blocks, seq.hash_parent)

    def finish(self, seq: Seq) -> None:
        """Retire a sequence (done, stopped or cancelled): its blocks are freed at once."""
        if seq.state is State.RUNNING:
            self.running.remove(seq)
        elif seq.state is State.WAITING:
            self.waiting.remove(seq)
        seq.state = State.FINISHED
        self.blocks.free(seq.table)

    # -- helpers --------------------------------------------------------------------------
    def _enqueue(self, seq: Seq) -> None:
        self.waiting.append(seq)
        self.waiting.sort(key=Seq.rank)

    def _worst_running(self, exclude: set[int] = frozenset()) -> Seq:
        candidates = [s for s in self.running if s.id not in exclude] or self.running
        return max(candidates, key=Seq.rank)

    def _preempt(self, seq: Seq) -> None:
        self.running.remove(seq)
        self.blocks.free(seq.table)
        seq.computed = seq.hashed_blocks = seq.hash_parent = 0
        seq.preemptions += 1
        self.add(seq)

    def _make_room(self, seq: Seq, scheduled: set[int], work: list[Work], preempted: list[Seq]) -> bool:
        """Preempt the worst running sequence for ``seq`` if ``seq`` ranks better."""
        if not self.running:
            return False
        victim = max(self.running, key=Seq.rank)
        if victim.rank() <= seq.rank():
            return False
        self._preempt(victim)
        preempted.append(victim)
        scheduled.discard(victim.id)
        return True

    def _admit(self, seq: Seq, budget: int, scheduled: set[int], work: list[Work], preempted: list[Seq]) -> Work | None:
        tokens = seq.tokens
        if not seq.table:
            seq.hashed_blocks = seq.hash_parent = 0  # a new table: its blocks are walked again
            hits = self.blocks.match_prefix(tokens)
            seq.table.extend(hits)
            seq.computed = len(hits) * self.blocks.block_size
            if not seq.admitted:
                seq.cached_tokens = seq.computed
                self.prefix_queries += len(seq.prompt)
                self.prefix_hits += seq.computed
        count = min(seq.length - seq.computed, budget)
        while not self.blocks.allocate(seq.table, seq.computed + count, reserve=self.budget.watermark_blocks):
            if not self._make_room(seq, scheduled, work, preempted):
                self.blocks.free(seq.table)  # give the prefix blocks back; it stays first in line
                seq.computed = 0
                return None
        self.waiting.remove(seq)
        seq.state, seq.admitted = State.RUNNING, True
        self.running.append(seq)
        return Work(seq, seq.computed, count)

