"""Text generation (optimize(task="text-generation")): greedy output equals HF generate's token for
token on GPT-2 and Llama/Qwen2/Mistral-shaped configs, with continuous batching and the prefix
cache; sampling is reproducible; bad input fails clearly."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import leangraph
from leangraph.errors import InputMismatchError, OptionError
from leangraph.runtime.generation import PrefixCache

_SMALL = dict(vocab_size=100, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=64, initializer_range=0.5)


def causal_lm(name: str) -> torch.nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if name == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      initializer_range=0.5)
        return transformers.GPT2LMHeadModel(cfg).eval()
    if name == "opt":  # its MLP runs on positions flattened with the batch, [batch*seq, width]
        cfg = transformers.OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32, init_std=0.5)
        return transformers.OPTForCausalLM(cfg).eval()
    if name == "falcon":  # fused q/k/v picked apart by GatherND; rotary; parallel attention and MLP
        cfg = transformers.FalconConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        new_decoder_architecture=False, alibi=False, initializer_range=0.5)
        return transformers.FalconForCausalLM(cfg).eval()
    config_cls, model_cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                             "mistral": ("MistralConfig", "MistralForCausalLM")}[name]
    extra = {"sliding_window": None} if name == "mistral" else {}
    cfg = getattr(transformers, config_cls)(hidden_size=32, num_key_value_heads=2, **_SMALL, **extra)
    return getattr(transformers, model_cls)(cfg).eval()


class Logits(torch.nn.Module):
    """A HF causal LM as ``input_ids, attention_mask -> logits``, its cache off (a stateless decoder
    to export)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def hf_greedy(lm, prompt, n):
    # the mask given: HF would otherwise take tokens equal to pad_token_id for padding
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          pad_token_id=0)
    return out[0, len(prompt):].tolist()


_RNG = np.random.default_rng(1)
PROMPTS = [[int(t) for t in _RNG.integers(0, 100, n)] for n in (5, 9, 3, 12)]
SHARED = [int(t) for t in _RNG.integers(0, 100, 10)]


@pytest.fixture(scope="module")
def gpt2():
    lm = causal_lm("gpt2")
    return lm, leangraph.optimize(lm, task="text-generation")


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "mistral", "opt", "falcon"])
def test_greedy_tokens_equal_hf_generate_with_batching_and_the_prefix_cache(name):
    lm = causal_lm(name)
    gen = leangraph.optimize(lm, task="text-generation")
    assert any("verified against the stateless decoder" in n for n in gen.report.notes)
    eos = lm.generation_config.eos_token_id  # HF generate stops there (OPT's random weights reach it)
    out = gen.generate(PROMPTS, max_new_tokens=8, eos_token_id=eos)  # four lengths decoded as one batch
    assert out == [hf_greedy(lm, p, 8) for p in PROMPTS]
    # a prompt extending a finished request prefills only its new part
    follow = [int(t) for t in PROMPTS[1]] + out[1][:3]
    assert gen.generate([follow], max_new_tokens=4, eos_token_id=eos) == [hf_greedy(lm, follow, 4)]
    stats = gen.cache_stats
    assert stats.hits == 1 and stats.tokens_reused == len(follow) - 1 and stats.bytes_held > 0


def test_prompts_sharing_a_prefix_in_one_call_prefill_it_once(gpt2):
    lm, gen = gpt2
    before = gen.cache_stats
    prompts = [SHARED + [t] for t in (3, 4, 5)]
    assert gen.generate(prompts, max_new_tokens=4) == [hf_greedy(lm, p, 4) for p in prompts]
    after = gen.cache_stats
    assert after.hits - before.hits == 2 and after.tokens_reused - before.tokens_reused == 2 * len(SHARED)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_batch_sharing_a_long_prefix_attends_it_once_and_gives_hf_tokens(name):
    lm = causal_lm(name)
    gen = leangraph.optimize(lm, task="text-generation")
    assert any("shared_prefix_attention: verified" in n for n in gen.report.notes)
    shared = [int(t) for t in np.random.default_rng(5).integers(0, 100, 20)]
    prompts = [shared + [t] * k for t, k in ((3, 1), (4, 3), (5, 2))]  # own parts of different lengths
    assert gen.generate(prompts, max_new_tokens=6) == [hf_greedy(lm, p, 6) for p in prompts]
    assert gen.cache_stats.shared_prefix_steps > 0


def test_eos_stops_a_request_and_others_go_on(gpt2):
    lm, gen = gpt2
    free = gen.generate(PROMPTS[:2], max_new_tokens=6)
    eos = free[0][2]
    out = gen.generate(PROMPTS[:2], max_new_tokens=6, eos_token_id=eos)
    assert out[0] == free[0][:free[0].index(eos) + 1]
    second = free[1][:free[1].index(eos) + 1] if eos in free[1] else free[1]
    assert out[1] == second


def test_sampling_is_reproducible_and_seed_dependent(gpt2):
    _, gen = gpt2
    kwargs = dict(max_new_tokens=12, do_sample=True, temperature=1.5, top_k=20, top_p=0.9)
    first = gen.generate(PROMPTS, seed=7, **kwargs)
    assert gen.generate(PROMPTS, seed=7, **kwargs) == first
    assert gen.generate(PROMPTS, seed=8, **kwargs) != first
    # a request's tokens do not depend on the batch it ran in
    assert gen.generate(PROMPTS[:1], seed=7, **kwargs)[0] == first[0]


def test_stream_yields_what_generate_returns(gpt2):
    _, gen = gpt2
    expected = gen.generate(PROMPTS, max_new_tokens=5)
    streamed = [[] for _ in PROMPTS]
    for index, token in gen.stream(PROMPTS, max_new_tokens=5):
        streamed[index].append(token)
    assert streamed == expected


def test_generate_from_8_threads_gives_the_serial_tokens(gpt2):
    _, gen = gpt2
    serial = [gen.generate([p], max_new_tokens=6)[0] for p in PROMPTS * 2]
    results = [None] * len(serial)

    def worker(i):
        results[i] = gen.generate([(PROMPTS * 2)[i]], max_new_tokens=6)[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(serial))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == serial


def test_bad_prompts_and_options_fail_clearly(gpt2):
    _, gen = gpt2
    with pytest.raises(InputMismatchError, match="context of 64"):
        gen.generate([list(range(60))], max_new_tokens=10)
    with pytest.raises(InputMismatchError, match="outside the vocabulary"):
        gen.generate([[1, 2, 100]])
    with pytest.raises(InputMismatchError, match="empty"):
        gen.generate([[]])
    with pytest.raises(InputMismatchError, match="wrap a single prompt"):
        gen.generate([1, 2, 3])
    with pytest.raises(OptionError, match="max_new_tokens"):
        gen.generate(PROMPTS, max_new_tokens=-1)
    with pytest.raises(OptionError, match="cache_bytes"):
        leangraph.optimize(causal_lm("gpt2"), task="text-generation", cache_bytes=10)
    with pytest.raises(OptionError, match="task"):
        leangraph.optimize(causal_lm("gpt2"), task="translation")


def test_a_full_cache_evicts_least_recently_used_leaves():
    kv = lambda n: [(np.zeros((1, n, 4), np.float32), np.zeros((1, n, 4), np.float32))]  # 32 bytes a token
    cache = PrefixCache(capacity=32 * 10, axes=[1])
    cache.insert([1, 2, 3, 4], kv(4))
    cache.insert([1, 2, 9, 9], kv(4))  # shares [1, 2]: the edge splits, 2 new tokens held
    assert cache.stats.bytes_held == 32 * 6
    path, length = cache.lookup([1, 2, 3, 7])
    assert length == 3
    cache.release(path)
    cache.insert([5, 6, 7, 8, 9], kv(5))  # 11 tokens > 10: the least recently used leaf ([9, 9]) goes
    assert cache.stats.evictions == 1 and cache.stats.bytes_held == 32 * 9
    assert cache.lookup([1, 2, 9, 9])[1] == 2 and cache.lookup([1, 2, 3, 4])[1] == 4


def test_an_encoder_cannot_get_a_kv_cache_and_says_why():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, is_decoder=False)
    with pytest.raises(leangraph.errors.LeanGraphError, match="not causal"):
        leangraph.optimize(transformers.BertForMaskedLM(cfg).eval(), task="text-generation")


@pytest.mark.parametrize("name", ["gpt2", "qwen2", "opt"])
def test_a_torchscript_exported_decoder_file_generates_hf_greedy_tokens(name, tmp_path):
    # the TorchScript exporter numbers GPT-2's positions by Range over the embeddings' shape and
    # leaves the head counts of Qwen2's head splits and repeat_kv unknown (settled by probing)
    lm = causal_lm(name)

    path = str(tmp_path / "decoder.onnx")
    ids = torch.randint(0, 100, (2, 6))
    axes = {0: "batch", 1: "seq"}
    torch.onnx.export(Logits(lm).eval(), (ids, torch.ones_like(ids)), path, dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": axes})
    gen = leangraph.optimize(path, task="text-generation")
    prompts = PROMPTS[:2] + [PROMPTS[0][::-1]]
    eos = lm.generation_config.eos_token_id
    assert gen.generate(prompts, max_new_tokens=5, eos_token_id=eos) == [hf_greedy(lm, p, 5) for p in prompts]


def test_an_onnx_decoder_file_generates_hf_greedy_tokens(tmp_path):
    # input_ids, attention_mask -> logits: positions are numbered by the graph itself, so requests
    # are batched only with requests of their length (no left padding)
    lm = causal_lm("gpt2")

    path = str(tmp_path / "decoder.onnx")
    ids = torch.randint(0, 100, (2, 6))
    torch.onnx.export(Logits(lm).eval(), (ids, torch.ones_like(ids)), path, dynamo=True,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_shapes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    gen = leangraph.optimize(path, task="text-generation")
    prompts = PROMPTS[:2] + [PROMPTS[0][::-1]]  # two of the same length
    assert gen.generate(prompts, max_new_tokens=6) == [hf_greedy(lm, p, 6) for p in prompts]


def export_with_past(lm, path: str) -> None:
    """A HF decoder exported with its cache as optimum names it: input_ids, attention_mask (past and
    new), position_ids (new), past_key_values.N.key/value -> logits, present.N.key/value."""
    import transformers

    layers = lm.config.num_hidden_layers

    class WithPast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = transformers.DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=cache, use_cache=True)
            return (out.logits, *[t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)])

    heads = getattr(lm.config, "num_key_value_heads", None) or lm.config.num_attention_heads
    size = lm.config.hidden_size // lm.config.num_attention_heads
    ids = torch.randint(0, 100, (2, 4))
    past = [torch.randn(2, heads, 3, size) for _ in range(2 * layers)]
    cache_in = [f"past_key_values.{i}.{w}" for i in range(layers) for w in ("key", "value")]
    cache_out = [f"present.{i}.{w}" for i in range(layers) for w in ("key", "value")]
    axes = {"input_ids": {0: "batch", 1: "seq"}, "position_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "total"}, "logits": {0: "batch", 1: "seq"},
            **{n: {0: "batch", 2: "past"} for n in cache_in}, **{n: {0: "batch", 2: "total"} for n in cache_out}}
    torch.onnx.export(WithPast().eval(), (ids, torch.ones(2, 7, dtype=torch.long), torch.arange(3, 7).repeat(2, 1),
                                          *past), path, dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask", "position_ids", *cache_in],
                      output_names=["logits", *cache_out], dynamic_axes=axes)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_decoder_with_its_own_cache_is_used_as_it_is(name, tmp_path):
    lm = causal_lm(name)
    path = str(tmp_path / "decoder_with_past.onnx")
    export_with_past(lm, path)
    gen = leangraph.optimize(path, task="text-generation")
    assert any("existing_kv_cache: the decoder's own cache used as it is (2 layers)" in n for n in gen.report.notes)
    assert not any("introduce_kv_cache" in n for n in gen.report.notes)
    assert gen.layout.past[0] == ("past_key_values.0.key", "past_key_values.0.value")
    prompts = PROMPTS + [SHARED * 2 + [3], SHARED * 2 + [4, 5], SHARED * 2 + [6]]
    assert gen.generate(prompts, max_new_tokens=5) == [hf_greedy(lm, p, 5) for p in prompts]
    later = [SHARED * 2 + [7], SHARED * 2 + [8, 9]]  # the cached 20-token prefix, shared by the batch
    assert gen.generate(later, max_new_tokens=5) == [hf_greedy(lm, p, 5) for p in later]
    assert gen.cache_stats.shared_prefix_steps > 0
    if name == "llama":  # grouped KV heads: attention reads the cached heads without repeat_kv
        assert any("grouped_query_attention: 2 attention nodes" in n for n in gen.report.notes)


@pytest.mark.parametrize("backend", ["tvm", "torch"])
def test_step_graphs_run_on_the_tvm_and_torch_backends(backend):
    # what the backend does not take (the cache's shape arithmetic) runs on ONNX Runtime, listed
    lm = causal_lm("llama")
    gen = leangraph.optimize(lm, task="text-generation", backend=backend)
    prompts = PROMPTS[:2] + [SHARED * 2 + [3]]
    later = [SHARED * 2 + [4], SHARED * 2 + [5]]  # decoded on the shared prefix
    assert gen.generate(prompts, max_new_tokens=4) + gen.generate(later, max_new_tokens=4) == [
        hf_greedy(lm, p, 4) for p in prompts + later]
    assert gen.cache_stats.shared_prefix_steps > 0
    assert any(f"{backend} -> onnxruntime" in f for f in gen.report.fallbacks)
