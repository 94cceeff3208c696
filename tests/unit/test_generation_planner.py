"""The engine's device-free parts: the block manager (paged KV cache, prefix cache) and the
planner (admission under token and block budgets, chunked prefill, preemption, priority),
driven with hand-made step outputs; and per-request sampling."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from server.core.errors import InvalidInput
from server.scheduling.generation.blocks import BlockManager
from server.scheduling.generation.planner import Budget, Planner, Seq, State
from server.scheduling.generation.sampling import SamplingParams, log_softmax, params_from, sample


# -- block manager ----------------------------------------------------------------------
def test_allocate_grow_and_free_all_or_nothing():
    blocks = BlockManager(num_blocks=4, block_size=4)
    table: list[int] = []
    assert blocks.allocate(table, 5) and len(table) == 2
    assert blocks.allocate(table, 8) and len(table) == 2  # still fits
    assert not blocks.allocate(table, 17)  # needs 5 blocks: nothing taken
    assert len(table) == 2 and blocks.free_blocks() == 2
    assert blocks.usage() == 0.5
    blocks.free(table)
    assert table == [] and blocks.free_blocks() == 4 and blocks.usage() == 0.0


def test_prefix_cache_shares_full_blocks_and_leaves_a_token_to_compute():
    blocks = BlockManager(num_blocks=8, block_size=4)
    prompt = list(range(100, 110))  # 10 tokens: 2 full blocks + 2
    first: list[int] = []
    blocks.allocate(first, len(prompt))
    blocks.register(first, prompt, len(prompt))
    hits = blocks.match_prefix(prompt)
    assert hits == first[:2]  # the two full blocks, shared
    assert blocks.match_prefix(prompt[:8]) == first[:1]  # 8 tokens: the second block would leave nothing to compute
    assert blocks.match_prefix([1] + prompt[1:]) == []  # differs in the first block: the chain breaks at once
    other = prompt[:4] + [7, 7, 7, 7, 7]
    assert blocks.match_prefix(other) == first[:1]
    blocks.free(first)
    # freed but cached: still found, and reused only after never-cached blocks run out
    again = blocks.match_prefix(prompt)
    assert again == hits


def test_cached_blocks_are_evicted_lru_when_memory_runs_out():
    blocks = BlockManager(num_blocks=2, block_size=2)
    table: list[int] = []
    blocks.allocate(table, 4)
    blocks.register(table, [1, 2, 3, 4], 4)
    blocks.free(table)
    assert blocks.free_blocks() == 2  # cached blocks count as free
    fresh: list[int] = []
    assert blocks.allocate(fresh, 4)  # evicts both
    assert blocks.match_prefix([1, 2, 3, 4, 5]) == []


def test_prefix_caching_off():
    blocks = BlockManager(num_blocks=4, block_size=2, prefix_caching=False)
    table: list[int] = []
    blocks.allocate(table, 4)
    blocks.register(table, [1, 2, 3, 4], 4)
    assert blocks.match_prefix([1, 2, 3, 4, 5]) == []


# -- planner, with a fake model: token t is followed by t + 1 ---------------------------
def drive(planner: Planner, steps: int = 1000, on_plan=None) -> list:
    """Run the loop with hand-made outputs; retire sequences at max_tokens."""
    plans = []
    for _ in range(steps):
        if not planner.running and not planner.waiting:
            break
        plan = planner.schedule()
        plans.append(plan)
        if on_plan:
            on_plan(plan)
        sampled = {w.seq.id: w.seq.tokens[-1] + 1 for w in plan.work if w.samples}
        planner.account(plan, sampled)
        for w in plan.work:
            if w.seq.state is State.RUNNING and len(w.seq.output) >= w.seq.max_tokens:
                planner.finish(w.seq)
    return plans


def test_continuous_batching_joins_and_retires_mid_flight():
    planner = Planner(BlockManager(64, 4), Budget(max_batched_tokens=64, max_seqs=8))
    a = Seq([1, 2, 3], max_tokens=3, arrival=0)
    planner.add(a)
    plan = planner.schedule()
    assert [(w.seq, w.start, w.count) for w in plan.work] == [(a, 0, 3)]
    planner.account(plan, {a.id: 4})
    b = Seq([10, 11], max_tokens=5, arrival=1)
    planner.add(b)
    plan = planner.schedule()  # a decodes its one token, b prefills: one iteration
    assert [(w.seq, w.start, w.count) for w in plan.work] == [(a, 3, 1), (b, 0, 2)]
    planner.account(plan, {a.id: 5, b.id: 12})
    drive(planner)
    assert a.output == [4, 5, 6] and b.output == [12, 13, 14, 15, 16]
    assert planner.blocks.usage() == 0.0  # everything freed


def test_chunked_prefill_under_the_token_budget():
    planner = Planner(BlockManager(64, 4), Budget(max_batched_tokens=8, max_seqs=8))
    long = Seq(list(range(20)), max_tokens=2, arrival=0)
    short = Seq([50], max_tokens=2, arrival=1)
    planner.add(long)
    planner.add(short)
    plans = drive(planner)
    assert [(w.start, w.count) for w in plans[0].work] == [(0, 8)]
    assert [(w.start, w.count) for w in plans[1].work if w.seq is long] == [(8, 8)]
    assert all(p.tokens <= 8 for p in plans)
    assert not plans[0].work[0].samples and long.output == [20, 21]  # sampled only from the prompt's last token
    assert short.output == [51, 52]


def test_max_seqs_bounds_the_batch():
    planner = Planner(BlockManager(64, 4), Budget(max_batched_tokens=64, max_seqs=2))
    seqs = [Seq([i], max_tokens=3, arrival=i) for i in range(5)]
    for s in seqs:
        planner.add(s)
    plans = drive(planner)
    assert max(len(p.work) for p in plans) == 2
    assert all(s.output == [s.prompt[0] + 1, s.prompt[0] + 2, s.prompt[0] + 3] for s in seqs)


def test_preemption_by_recompute_when_blocks_run_out():
    # 6 blocks of 2 tokens; two sequences that each grow to 8 tokens (4 blocks): they cannot both fit.
    planner = Planner(BlockManager(6, 2), Budget(max_batched_tokens=64, max_seqs=8, watermark_blocks=0))
    a = Seq([1, 2], max_tokens=6, arrival=0)
    b = Seq([20, 21], max_tokens=6, arrival=1)
    planner.add(a)
    planner.add(b)
    plans = drive(planner)
    preempted = [s for p in plans for s in p.preempted]
    assert preempted and all(s is b for s in preempted)  # the later arrival yields
    assert a.output == [3, 4, 5, 6, 7, 8] and b.output == [22, 23, 24, 25, 26, 27]  # recompute loses nothing
    readmitted = [w for p in plans for w in p.work if w.seq is b and b in p.admitted and b.preemptions]
    assert readmitted and readmitted[-1].count > 1  # what b had lost is computed again (less the prefix cache's part)


def test_priority_preempts_a_full_batch():
    planner = Planner(BlockManager(64, 4), Budget(max_batched_tokens=64, max_seqs=1))
    low = Seq([1], max_tokens=10, priority=5, arrival=0)
    planner.add(low)
    planner.account(planner.schedule(), {low.id: 2})
    urgent = Seq([100], max_tokens=2, priority=0, arrival=1)
    planner.add(urgent)
    plan = planner.schedule()
    assert plan.preempted == (low,) and [w.seq for w in plan.work] == [urgent]
    drive(planner)
    assert urgent.output == [101, 102] and low.output[-1] == 11 and len(low.output) == 10


def test_prefix_hits_are_counted_and_skip_computation():
    planner = Planner(BlockManager(64, 4), Budget(max_batched_tokens=64, max_seqs=8))
    system = list(range(200, 212))  # 12 tokens = 3 blocks
    first = Seq(system + [1, 2], max_tokens=1, arrival=0)
    planner.add(first)
    drive(planner)
    second = Seq(system + [3, 4], max_tokens=1, arrival=1)
    planner.add(second)
    plan = planner.schedule()
    assert [(w.start, w.count) for w in plan.work] == [(12, 2)]
    assert second.cached_tokens == 12
    assert planner.prefix_hits == 12 and planner.prefix_queries == 28


def test_cancel_frees_blocks_at_once():
    planner = Planner(BlockManager(8, 4), Budget())
    seq = Seq(list(range(10)), max_tokens=100, arrival=0)
    planner.add(seq)
    planner.account(planner.schedule(), {seq.id: 10})
    assert planner.blocks.usage() > 0
    planner.finish(seq)
    assert planner.blocks.usage() == 0.0 and not planner.running


# -- sampling -----------------------------------------------------------------------------
LOGITS = np.array([0.0, 2.0, 1.0, -1.0, 0.5], dtype=np.float32)


def test_greedy_and_model_logprobs():
    draw = sample(LOGITS, SamplingParams(temperature=0.0, logprobs=True, top_logprobs=2), np.random.default_rng(0),
                  Counter())
    assert draw.token == 1
    expected = log_softmax(LOGITS)
    assert draw.logprob == pytest.approx(expected[1])
    assert [t for t, _ in draw.top] == [1, 2]


def test_seeded_draws_repeat_and_follow_the_distribution():
    params = SamplingParams(temperature=1.0)
    runs = [[sample(LOGITS, params, np.random.default_rng(7), Counter()).token for _ in range(1)] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    rng = np.random.default_rng(1)
    counts = Counter(sample(LOGITS, params, rng, Counter()).token for _ in range(4000))
    probs = np.exp(log_softmax(LOGITS))
    for token in range(5):
        assert counts[token] / 4000 == pytest.approx(probs[token], abs=0.03)


def test_top_k_top_p_penalties_and_mask():
    rng = np.random.default_rng(0)
    top_k = {sample(LOGITS, SamplingParams(top_k=2), rng, Counter()).token for _ in range(300)}
    assert top_k == {1, 2}
    top_p = {sample(LOGITS, SamplingParams(top_p=0.5), rng, Counter()).token for _ in range(300)}
    assert top_p == {1}  # token 1 alone holds more than half the mass
    penalized = sample(LOGITS, SamplingParams(temperature=0.0, frequency_penalty=2.0), rng, Counter({1: 2}))
    assert penalized.token == 2
    allowed = np.array([True, False, False, True, False])
    assert {sample(LOGITS, SamplingParams(), rng, Counter(), allowed).token for _ in range(200)} == {0, 3}


def test_parameters_are_checked_with_clear_messages():
    assert params_from({}, 100) == SamplingParams()
    p = params_from({"temperature": 0, "stop": "x", "n": 2, "top_logprobs": 3, "seed": 5}, 100)
    assert p.greedy and p.stop == ("x",) and p.n == 2 and p.logprobs and p.seed == 5
    for bad, words in [({"temperature": 3}, "between 0 and 2"), ({"top_p": 0}, "top_p"), ({"n": 0}, "'n'"),
                       ({"stop": [1]}, "'stop'"), ({"stop_token_ids": [100]}, "outside the vocabulary"),
                       ({"max_tokens": 0}, "max_tokens"), ({"seed": "a"}, "'seed'"), ({"logprobs": 1}, "logprobs"),
                       ({"response_format": "json"}, "response_format"), ({"top_logprobs": 21}, "top_logprobs")]:
        with pytest.raises(InvalidInput, match=words):
            params_from(bad, 100)
