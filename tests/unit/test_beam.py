"""Beam search against brute-force enumeration, greedy decoding and batch-independence (the exact search and
batch-independence on both paths of a step: the C library and torch's calls)."""

import itertools

import pytest
import torch

from nmt.tokens import BOS, EOS
from tests.helpers import tiny_model, use_native_target
from nmt.decode.config import DecodeConfig
from nmt.decode import beam as beam_module
from nmt.decode.beam import Scorer, beam_search, best_extensions, greedy_search
from nmt.decode.penalty import length_penalty
from nmt.model.transformer import Transformer

SRC = torch.tensor([[4, 4, 1, 3], [4, 3, 0, 0]])
MAX_LEN = 6


class EosShifted(Scorer):
    """A real tiny model whose EOS log-probability is lowered by ``shift`` (then renormalised), so the best
    hypotheses are long enough for the search to matter."""

    def __init__(self, model: Transformer, shift: float) -> None:
        super().__init__([model])
        self.shift = shift

    def step(self, tokens, states):  # noqa: ANN001, ANN201
        lprobs = super().step(tokens, states).clone()
        lprobs[:, EOS] -= self.shift
        return lprobs.log_softmax(-1)


def scorer(seed: int = 3, shift: float = 2.0) -> EosShifted:
    return EosShifted(tiny_model(5, seed), shift)


def enumerate_outputs(s: Scorer, i: int, alpha: float, kind: str) -> list[tuple[float, list[int]]]:
    """Every output of at most MAX_LEN tokens (EOS included) over the vocabulary {UNK, 4}, scored exactly,
    best first."""
    found = []
    for n in range(MAX_LEN):
        for seq in itertools.product([1, 4], repeat=n):
            states = s.start(SRC[i : i + 1], 1)
            total, prev = 0.0, BOS
            for tok in [*seq, EOS]:
                total += s.step(torch.tensor([prev]), states)[0, tok].item()
                prev = tok
            found.append((total / length_penalty(n + 1, alpha, kind), list(seq)))
    return sorted(found, key=lambda f: -f[0])


def brute_force(s: Scorer, i: int, alpha: float, kind: str) -> tuple[float, list[int]]:
    return enumerate_outputs(s, i, alpha, kind)[0]


@pytest.mark.parametrize("alpha,kind", [(0.6, "gnmt"), (0.0, "gnmt"), (1.0, "fairseq"), (2.0, "gnmt")])
def test_beam_covering_the_space_finds_the_exact_best(alpha: float, kind: str, step_path: str) -> None:
    s = scorer()
    with torch.no_grad():
        result = beam_search(s, SRC, [MAX_LEN, MAX_LEN], beam=3 * 2 ** (MAX_LEN - 1), alpha=alpha, penalty=kind, stop="bound")
        for i in range(2):
            score, tokens = brute_force(s, i, alpha, kind)
            assert result[i][0].tokens == tokens
            assert result[i][0].score == pytest.approx(score, abs=1e-4)


# (seed, EOS shift, α, penalty): the first two stop too early under a rule that only waits for the best
# finished hypothesis to be safe (checked by breaking the rule); the others cover the penalties.
@pytest.mark.parametrize("seed,shift,alpha,kind", [(0, -1.0, 0.0, "gnmt"), (4, 0.0, 0.0, "gnmt"), (5, 2.0, 0.6, "gnmt"), (5, 1.0, 1.0, "fairseq")])
def test_nbest_equals_the_n_best_outputs(seed: int, shift: float, alpha: float, kind: str) -> None:
    """The stopping rule must wait for the n-th best finished hypothesis to be safe, not the best one."""
    s = scorer(seed=seed, shift=shift)
    with torch.no_grad():
        result = beam_search(s, SRC, [MAX_LEN, MAX_LEN], beam=3 * 2 ** (MAX_LEN - 1), alpha=alpha, penalty=kind, nbest=4, stop="bound")
        for i in range(2):
            expected = enumerate_outputs(s, i, alpha, kind)[:4]
            assert [h.tokens for h in result[i]] == [tokens for _, tokens in expected]
            assert [h.score for h in result[i]] == pytest.approx([score for score, _ in expected], abs=1e-4)


def reference_search(model: Transformer, shift: float, src: torch.Tensor, max_len: int, k: int, alpha: float,
                     kind: str, stop: str, nbest: int) -> list[tuple[list[int], float]]:
    """One sentence, written as each rule reads, with no cache, batching or tensors of candidates. Each step
    ranks every one-token extension of the live hypotheses and keeps the best 2k; EOS is forced at the limit.

    "beam" (fairseq, CTranslate2): the EOS candidates among the best k finish, the best k others live on, and
    the search ends once k have finished. "bound" (tensor2tensor's beam_search.py): the EOS candidates among
    all 2k are offered to the finished set, which keeps the best k (grow_finished); the best k others live on
    (grow_alive); the search ends when the lowest score in the finished set is greater than the best live
    log-probability divided by the penalty of the longest output (_is_finished), once nbest have finished."""
    def lprobs(prefix: list[int]) -> list[float]:  # a full forward pass over the prefix, as EosShifted scores
        out = model(src[None], torch.tensor([[BOS, *prefix]]))[0, -1].log_softmax(-1)
        out[EOS] -= shift
        out = out.log_softmax(-1)
        out[0] = out[BOS] = float("-inf")  # PAD and BOS are never output
        return out.tolist()

    by_score = lambda f: -f[1]  # noqa: E731
    live: list[tuple[list[int], float]] = [([], 0.0)]
    finished: list[tuple[list[int], float]] = []
    for t in range(max_len):
        candidates = []
        for prefix, score in live:
            for tok, lp in enumerate(lprobs(prefix)):
                if t + 1 < max_len or tok == EOS:
                    candidates.append((score + lp, prefix, tok))
        candidates.sort(key=lambda c: -c[0])
        top = candidates[: 2 * k]
        may_finish = top if stop == "bound" else top[:k]
        finished += [(p, sc / length_penalty(t + 1, alpha, kind)) for sc, p, tok in may_finish if tok == EOS and sc > float("-inf")]
        if stop == "bound":
            finished = sorted(finished, key=by_score)[:k]
        live = [(p + [tok], sc) for sc, p, tok in top if tok != EOS][:k]
        if not live or stop == "beam" and len(finished) >= k:
            break
        if stop == "bound" and len(finished) >= nbest and finished[-1][1] > live[0][1] / length_penalty(max_len, alpha, kind):
            break
    return sorted(finished, key=by_score)[:nbest]


# (seed, EOS shift, α, penalty, nbest), chosen among random models for outputs of mixed lengths, some
# short of the limit, and for the rules to disagree (the first case).
RULE_CASES = [(1, 1.0, 1.0, "fairseq", 2), (3, 0.0, 0.6, "gnmt", 1), (3, 0.0, 0.0, "gnmt", 3)]
RULE_LENGTHS = [4, 1, 6, 3, 5]


def rule_case(seed: int) -> tuple[Transformer, torch.Tensor, list[int]]:
    """A random model of vocabulary 12 and five sources of different lengths, with limits |source| + 4."""
    model = tiny_model(12, seed)
    src = torch.zeros(len(RULE_LENGTHS), 7, dtype=torch.long)
    for i, n in enumerate(RULE_LENGTHS):
        src[i, :n] = torch.randint(4, 12, (n,))
        src[i, n] = EOS
    return model, src, [n + 4 for n in RULE_LENGTHS]


@pytest.mark.parametrize("stop", ["beam", "bound"])
@pytest.mark.parametrize("seed,shift,alpha,kind,nbest", RULE_CASES)
def test_beam_search_follows_its_stopping_rule(stop: str, seed: int, shift: float, alpha: float, kind: str, nbest: int) -> None:
    """Both stopping rules, batched, cached and shrinking as sentences finish, give what the plain rule
    gives one sentence at a time (unshifted, through the model's own scorer: the candidates of one C pass
    where the library is)."""
    model, src, limits = rule_case(seed)
    with torch.no_grad():
        s = Scorer([model]) if shift == 0 else EosShifted(model, shift)
        found = beam_search(s, src, limits, beam=3, alpha=alpha, penalty=kind, nbest=nbest, stop=stop)
        for i, n in enumerate(RULE_LENGTHS):
            expected = reference_search(model, shift, src[i, : n + 1], limits[i], 3, alpha, kind, stop, nbest)
            assert [h.tokens for h in found[i]] == [tokens for tokens, _ in expected]
            assert [h.score for h in found[i]] == pytest.approx([score for _, score in expected], abs=1e-4)


def test_the_two_rules_differ_here() -> None:
    """The cases above have teeth: on some of their sentences the two rules give different results (the
    batched search stands in for the reference here, as the test above shows they agree)."""
    differ = 0
    with torch.no_grad():
        for seed, shift, alpha, kind, nbest in RULE_CASES:
            model, src, limits = rule_case(seed)
            beam, bound = (beam_search(EosShifted(model, shift), src, limits, beam=3, alpha=alpha, penalty=kind, nbest=nbest, stop=stop)
                           for stop in ("beam", "bound"))
            differ += sum([h.tokens for h in a] != [h.tokens for h in b] for a, b in zip(beam, bound))
    assert differ >= 2


def test_output_length_limit_is_the_papers() -> None:
    """§6.1's maximum output length, input length + 50, as tensor2tensor counts it: a model that never
    wants to stop writes exactly |source| + 50 tokens, then the forced EOS."""
    s = scorer(shift=1e4)  # EOS is never chosen before it is forced
    src = torch.tensor([[4, 4, 1, 3], [4, 3, 0, 0]])
    limits = [DecodeConfig().max_output_len(n, 1024) for n in (3, 1)]
    with torch.no_grad():
        result = beam_search(s, src, limits, beam=2)
    assert [len(h[0].tokens) for h in result] == [3 + 50, 1 + 50]


def test_search_is_not_trivial_here() -> None:
    """The brute-force optimum is long and differs from greedy decoding, so the test above has teeth."""
    s = scorer()
    with torch.no_grad():
        greedy = [h[0].tokens for h in beam_search(s, SRC, [MAX_LEN] * 2, beam=1, alpha=0.0)]
        bests = [brute_force(s, i, 2.0, "gnmt")[1] for i in range(2)]
        optimum = [brute_force(s, i, 0.0, "gnmt")[1] for i in range(2)]  # greedy's own objective
    assert any(len(b) >= 2 for b in bests) and greedy != bests
    assert greedy != optimum  # greedy misses the most probable output, which the wide beam above finds
    plain = scorer(shift=0.0)
    with torch.no_grad():
        assert [h[0].tokens for h in beam_search(plain, SRC, [MAX_LEN] * 2, beam=1, alpha=0.0)] == greedy_search(plain.models[0], SRC, [MAX_LEN] * 2)


def test_beam_one_equals_greedy() -> None:
    for seed in range(4):
        model = tiny_model(30, seed)
        src = torch.randint(4, 30, (6, 9))
        lens = [12] * 6
        beam = beam_search(Scorer([model]), src, lens, beam=1, alpha=0.0)
        assert [h[0].tokens for h in beam] == greedy_search(model, src, lens)


def test_batched_equals_one_by_one_and_nbest_sorted(step_path: str) -> None:
    model = tiny_model(30)
    lengths = [3, 9, 5, 1, 7]
    src = torch.zeros(5, 10, dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, :n] = torch.randint(4, 30, (n,))
        src[i, n] = EOS
    lens = [n + 6 for n in lengths]
    batched = beam_search(Scorer([model]), src, lens, beam=4, nbest=3)
    for i, n in enumerate(lengths):
        alone = beam_search(Scorer([model]), src[i : i + 1, : n + 1], [lens[i]], beam=4, nbest=3)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert all(a.score >= b.score for a, b in zip(batched[i], batched[i][1:]))
        assert all(len(h.tokens) < lens[i] for h in batched[i])


@pytest.mark.parametrize("stop", ["beam", "bound"])
@pytest.mark.parametrize("vocab", [300, 7])  # 7: fewer tokens (5 but PAD and BOS) than the 2k candidates of beam 4 and 5
def test_the_fused_candidates_search_as_the_log_probabilities(stop: str, vocab: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the C library is, the search takes each row's best candidates from one pass over the output
    projection (``Scorer.step_top``); it finds what the (R, V) log-probabilities of ``Scorer.step`` find,
    sentences at their length limit (only EOS) included."""
    use_native_target("native", monkeypatch)
    model = tiny_model(vocab, d_model=64, d_ff=128, offset_vectors=True)
    lengths = [3, 9, 5, 1, 7, 2]
    src = torch.zeros(len(lengths), 10, dtype=torch.long)
    g = torch.Generator().manual_seed(4)
    for i, n in enumerate(lengths):
        src[i, :n] = torch.randint(4, vocab, (n,), generator=g)
        src[i, n] = EOS
    lens = [2 + i // 2 if i % 2 else 20 for i in range(len(lengths))]  # 2, 3 and 4 tokens: too short to end on their own
    calls = {"fused": 0}
    step_top = Scorer.step_top

    def counted(self, *args):  # noqa: ANN001, ANN202
        calls["fused"] += 1
        return step_top(self, *args)

    monkeypatch.setattr(Scorer, "step_top", counted)
    with torch.no_grad():
        for beam, nbest in ((1, 1), (4, 3), (5, 2)):
            fused = beam_search(Scorer([model]), src, lens, beam=beam, nbest=nbest, stop=stop)
            assert calls.pop("fused") and not calls
            calls["fused"] = 0
            with monkeypatch.context() as m:
                m.setattr(Scorer, "fuses_top", lambda self, states: False)
                plain = beam_search(Scorer([model]), src, lens, beam=beam, nbest=nbest, stop=stop)
            assert calls["fused"] == 0
            for a, b in zip(fused, plain):
                assert [h.tokens for h in a] == [h.tokens for h in b]
                assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
            assert beam == 1 or any(len(h.tokens) == n - 1 for hyps, n in zip(fused, lens) for h in hyps)  # some ended by their limit


@pytest.mark.parametrize("vocab", [129, 1000, 1017, 4000])
@pytest.mark.parametrize("m, r", [(4, 1), (9, 4), (2, 4)])
def test_best_extensions_equal_one_top_k_over_each_sentence(vocab: int, m: int, r: int) -> None:
    """The chunked selection (and the per-row one, for fewer than 4 sentences) against one top-k over each
    sentence's r × V sums: masked tokens, rows forced to EOS, a dead row, a last chunk shorter than the rest."""
    g = torch.Generator().manual_seed(vocab + m)
    lprobs = torch.randn(m * r, vocab, generator=g).log_softmax(-1)
    lprobs[:, :2] = float("-inf")  # PAD and BOS
    lprobs[1, torch.arange(vocab) != EOS] = float("-inf")  # a row at its length limit: only EOS
    lprobs[-1, -1] = 5.0  # the best entry sits in the last chunk
    scores = torch.randn(m, r, generator=g) * 3
    if r > 1:
        scores[0, 1] = float("-inf")  # a dead hypothesis
    for count in (8, 2 * r + 1):
        top, beam, token = best_extensions(lprobs, scores, count)
        sums = (scores[:, :, None] + lprobs.view(m, r, vocab)).view(m, r * vocab)
        want, flat = sums.topk(count, dim=1)
        torch.testing.assert_close(top, want, rtol=0, atol=0)
        finite = torch.isfinite(want)
        assert torch.equal(beam[finite], (flat // vocab)[finite]) and torch.equal(token[finite], (flat % vocab)[finite])
        # The scores found are the sums at the rows and tokens named.
        assert torch.equal(top[finite], sums.gather(1, beam * vocab + token)[finite])


def test_chunked_selection_searches_as_the_per_row_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A vocabulary of 300 and 6 sentences take the chunked selection; the same search with it turned off,
    and each sentence alone (one sentence takes the per-row one), find the same hypotheses."""
    model = tiny_model(300, seed=1)
    src = torch.randint(4, 300, (6, 7))
    src[:, -1] = EOS
    lens = [9] * 6
    with torch.no_grad():
        chunked = beam_search(Scorer([model]), src, lens, beam=4, nbest=2, stop="bound")
        alone = [beam_search(Scorer([model]), src[i : i + 1], lens[:1], beam=4, nbest=2, stop="bound")[0] for i in range(6)]
        monkeypatch.setattr(beam_module, "CHUNK", 10**6)  # every vocabulary is then too small for chunks
        per_row = beam_search(Scorer([model]), src, lens, beam=4, nbest=2, stop="bound")
    tokens = lambda found: [[h.tokens for h in hyps] for hyps in found]  # noqa: E731
    assert tokens(chunked) == tokens(per_row) == tokens(alone)
    assert any(len(h[0].tokens) > 2 for h in chunked)  # searches that went some way


def test_ensemble_of_identical_models_equals_one() -> None:
    model = tiny_model(30)
    src = torch.randint(4, 30, (3, 6))
    one = beam_search(Scorer([model]), src, [10] * 3)
    two = beam_search(Scorer([model, model]), src, [10] * 3)
    assert [h[0].tokens for h in one] == [h[0].tokens for h in two]


def test_length_penalties() -> None:
    assert length_penalty(1, 0.6) == 1.0
    assert length_penalty(10, 0.6) == pytest.approx((15 / 6) ** 0.6)
    assert length_penalty(10, 0.6, "fairseq") == pytest.approx(10**0.6)
    with pytest.raises(ValueError):
        length_penalty(3, 1.0, "other")


@pytest.mark.parametrize("stop, nbest", [("beam", 1), ("bound", 2)])
def test_each_sentence_is_handed_over_once_as_its_search_ends(stop: str, nbest: int) -> None:
    """``on_done`` gets every sentence exactly once, with what the search returns for it, and a sentence whose
    search ends early before the step at which the batch's last one ends (nmt serve answers it then)."""
    s = scorer(shift=0.0)
    src = torch.randint(4, 5, (5, 4), generator=torch.Generator().manual_seed(0))
    limits = [2, 9, 4, 9, 6]  # the limits force the ends apart
    calls: list[tuple[int, list, int]] = []
    steps = []
    original = s.step
    s.step = lambda tokens, states: (steps.append(1), original(tokens, states))[1]  # type: ignore[method-assign]
    with torch.no_grad():
        result = beam_search(s, src, limits, beam=3, nbest=nbest, stop=stop,
                             on_done=lambda i, hyps: calls.append((i, [(h.tokens, h.score) for h in hyps], len(steps))))
    assert sorted(i for i, _, _ in calls) == list(range(5))
    assert {i: hyps for i, hyps, _ in calls} == {i: [(h.tokens, h.score) for h in hyps] for i, hyps in enumerate(result)}
    when = {i: at for i, _, at in calls}
    assert when[0] <= 2 < len(steps) and when[0] < max(when.values())
