"""Generation: parity with transformers' generate, the KV cache, sampling warpers, compiles."""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import jaxtune.models as jm
from jaxtune.cli import generate as cli
from jaxtune.errors import UserError
from jaxtune.generate import SamplingConfig, generate, generate_text, sample
from jaxtune.generate import decode as decode_lib
from jaxtune.generate.sampling import top_k_filter, top_p_filter, warp
from tests.tiny_models import TINY_CONFIGS

TOL = 1e-4  # fp32 logits, max |diff|, fixed (as in the model parity tests)
PAD = 0
N_NEW = 10
PROMPT_LENGTHS = (9, 6, 3)


def left_padded_prompts(seed: int = 0, lengths=PROMPT_LENGTHS) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = max(lengths)
    ids = rng.integers(3, 128, size=(len(lengths), p)).astype(np.int32)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, p - n :] = 1
    return np.where(mask == 1, ids, PAD), mask


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    """loaded(name) -> (directory, model, params), cached per module."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            directory = tiny_checkpoint(name)
            cache[name] = (directory, *jm.load(directory))
        return cache[name]

    return get


def hf_greedy(model, ids, mask, max_new_tokens, eos):
    with torch.no_grad():
        out = model.generate(
            torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            pad_token_id=PAD,
            eos_token_id=eos,
        )
    return out[:, ids.shape[1] :].numpy()


# --------------------------------------------------------------------------- greedy parity
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_greedy_matches_transformers(loaded, name):
    directory, model, params = loaded(name)
    ids, mask = left_padded_prompts()

    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ours = generate(model, params, ids, mask, max_new_tokens=N_NEW, pad_id=PAD)
    ref = hf_greedy(hf, ids, mask, N_NEW, eos=None)
    np.testing.assert_array_equal(np.asarray(ours.tokens), ref)
    assert np.asarray(ours.mask).all() and (np.asarray(ours.lengths) == N_NEW).all()

    # An EOS that row 1 emits at step 3: rows stop at different steps (or never) and pad after.
    eos = int(ref[1, 3])
    ours = generate(model, params, ids, mask, max_new_tokens=N_NEW, eos_ids=[eos], pad_id=PAD)
    ref = hf_greedy(hf, ids, mask, N_NEW, eos=eos)  # HF stops early when all rows did
    tokens = np.asarray(ours.tokens)
    np.testing.assert_array_equal(tokens[:, : ref.shape[1]], ref)
    assert (tokens[:, ref.shape[1] :] == PAD).all()
    extras = (np.asarray(a) for a in (ours.mask, ours.lengths, ours.finished))
    rows = zip(tokens, *extras, strict=True)
    for row, mask_row, length, finished in rows:
        hits = np.flatnonzero(row == eos)
        expected = hits[0] + 1 if hits.size else N_NEW
        assert length == expected and mask_row.sum() == expected and mask_row[:expected].all()
        assert (row[expected:] == PAD).all()
        assert finished == (hits.size > 0)
    assert np.asarray(ours.lengths)[1] <= 4


# --------------------------------------------------------------------------- the cache itself
@pytest.mark.parametrize("name", ["llama", "mistral", "gemma3"])
def test_cached_decode_logits_equal_full_forward(loaded, name):
    """Prefill + one token at a time through the cache == one forward over the whole sequence.

    mistral and gemma3 (local and global layers) have a window of 5, far shorter than prompt +
    generation (21). Greedy parity with transformers covers the cache of every other family.
    """
    _, model, params = loaded(name)
    ids, mask = left_padded_prompts(seed=1)
    b, p = ids.shape
    steps = 12
    new = np.random.default_rng(2).integers(3, 128, size=(b, steps)).astype(np.int32)
    full_ids = np.concatenate([ids, new], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(new)], axis=1)
    full = np.asarray(jax.jit(model.apply)(params, full_ids, attention_mask=full_mask))

    prefill = jax.jit(
        lambda params, ids, mask, cache: model.apply(params, ids, attention_mask=mask, cache=cache)
    )
    step = jax.jit(lambda params, tok, cache: model.apply(params, tok, cache=cache))
    logits, cache = prefill(params, ids, mask, model.init_cache(b, p + steps))
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], full[:, :p][valid], atol=TOL, rtol=0)
    for t in range(steps):
        logits, cache = step(params, new[:, t : t + 1], cache)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, p + t], atol=TOL, rtol=0)


def test_sampled_tokens_and_logprobs_agree_with_full_forward(loaded):
    """Sampling inside the loop: tokens are among the top-k, logprobs are log softmax(z / T)."""
    _, model, params = loaded("gemma3")
    ids, mask = left_padded_prompts(seed=3)
    temperature, top_k = 0.7, 5
    out = generate(
        model,
        params,
        ids,
        mask,
        max_new_tokens=N_NEW,
        temperature=temperature,
        top_k=top_k,
        rng=jax.random.key(0),
    )
    tokens = np.asarray(out.tokens)
    assert np.asarray(out.mask).all() and not np.asarray(out.finished).any()
    again = generate(
        model,
        params,
        ids,
        mask,
        max_new_tokens=N_NEW,
        temperature=0.7,
        top_k=5,
        rng=jax.random.key(0),
    )
    np.testing.assert_array_equal(np.asarray(again.tokens), tokens)  # same key, same samples
    other = generate(
        model,
        params,
        ids,
        mask,
        max_new_tokens=N_NEW,
        temperature=0.7,
        top_k=5,
        rng=jax.random.key(1),
    )
    assert (np.asarray(other.tokens) != tokens).any()

    full_ids = np.concatenate([ids, tokens], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(tokens)], axis=1)
    logits = np.asarray(model.apply(params, full_ids, attention_mask=full_mask))
    logits = logits[:, ids.shape[1] - 1 : -1]  # (B, N, V): the logits each token was drawn from
    kth = np.sort(logits, axis=-1)[..., -top_k]
    picked = np.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
    assert (picked >= kth).all()
    scaled = logits / temperature
    top = scaled.max(-1)
    ref = picked / temperature - top - np.log(np.exp(scaled - top[..., None]).sum(-1))
    np.testing.assert_allclose(np.asarray(out.logprobs), ref, atol=TOL, rtol=0)


# --------------------------------------------------------------------------- compiles
def test_generate_compiles_once_per_bucket(loaded):
    _, model, params = loaded("llama")
    traces = []

    class CountingLM(type(model)):
        def hidden_states(self, *args, **kwargs):
            traces.append(args[1].shape)  # runs only while tracing
            return super().hidden_states(*args, **kwargs)

    counting = CountingLM(model.config)
    before = decode_lib._generate._cache_size()
    for lengths, eos in [((9, 6, 3), ()), ((5, 2, 4), (7,)), ((11, 11, 1), (7, 8))]:
        ids, mask = left_padded_prompts(seed=4, lengths=lengths)
        out = generate(counting, params, ids, mask, max_new_tokens=6, eos_ids=eos)
        jax.block_until_ready(out)
    # One prefill [B, 16] and one decode step [B, 1] traced, once, for three prompt lengths.
    assert traces == [(3, 16), (3, 1)]
    assert decode_lib._generate._cache_size() == before + 1

    ids, mask = left_padded_prompts(seed=4, lengths=(17, 3, 3))  # the next bucket: 32
    generate(counting, params, ids, mask, max_new_tokens=6)
    assert traces[2:] == [(3, 32), (3, 1)]


def test_generate_inside_a_users_jit(loaded):
    """PPO calls generate inside its own jitted step: same tokens, params traced."""
    _, model, params = loaded("llama")
    ids, mask = left_padded_prompts(seed=5, lengths=(16, 12, 5))
    direct = generate(model, params, ids, mask, max_new_tokens=6, eos_ids=(9,))

    @jax.jit
    def rollout(params, ids, mask):
        return generate(model, params, ids, mask, max_new_tokens=6, eos_ids=(9,))

    jitted = rollout(params, ids, mask)
    for a, b in zip(direct, jitted, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------- sampling functions
def fixed_logits() -> np.ndarray:
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(4, 50)).astype(np.float32) * 3
    logits[1, :5] = logits[1, 10]  # ties at the boundaries
    logits[2] = 0.0  # uniform row
    logits[3, 7] = 40.0  # one token holds all the mass
    return logits


def numpy_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    out = logits.copy()
    for row in out:
        kth = np.sort(row)[::-1][k - 1]
        row[row < kth] = -np.inf
    return out


def numpy_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the most likely tokens, in order, until their probability reaches p."""
    out = np.full_like(logits, -np.inf)
    for r, row in enumerate(logits):
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        mass = 0.0
        for i in np.argsort(-row, kind="stable"):
            out[r, i] = row[i]
            mass += probs[i]
            if mass >= p:
                break
    return out


def assert_same_kept(ours: np.ndarray, ref: np.ndarray, rtol: float = 0.0) -> None:
    """Rows keep the same logit values (which of several tied logits at a boundary is kept is
    arbitrary: torch's sort is not stable)."""
    for row, ref_row in zip(ours, ref, strict=True):
        kept, ref_kept = np.sort(row[np.isfinite(row)]), np.sort(ref_row[np.isfinite(ref_row)])
        np.testing.assert_allclose(kept, ref_kept, rtol=rtol, atol=0)


@pytest.mark.parametrize("k", [1, 3, 10, 49])
def test_top_k_matches_numpy_and_transformers(k):
    logits = fixed_logits()
    ours = np.asarray(top_k_filter(jnp.asarray(logits), k))
    np.testing.assert_array_equal(ours, numpy_top_k(logits, k))
    hf = TopKLogitsWarper(k)(None, torch.tensor(logits)).numpy()
    np.testing.assert_array_equal(ours, hf)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.6, 0.9, 0.999])
def test_top_p_matches_numpy_and_transformers(p):
    logits = fixed_logits()
    logits[2] += np.arange(50) * 1e-3  # break the uniform row's ties (sort order is arbitrary)
    ours = np.asarray(top_p_filter(jnp.asarray(logits), p))
    hf = TopPLogitsWarper(p)(None, torch.tensor(logits)).numpy()
    assert_same_kept(ours, hf)
    assert_same_kept(ours, numpy_top_p(logits, p))
    np.testing.assert_array_equal(ours[[0, 2, 3]], hf[[0, 2, 3]])  # rows without ties: exact
    assert np.isfinite(ours).sum(axis=1).min() >= 1
    assert np.isfinite(ours[3]).sum() == 1  # a dominant token is kept alone


def test_warp_applies_temperature_then_top_k_then_top_p():
    logits = fixed_logits()
    config = SamplingConfig(temperature=0.6, top_k=12, top_p=0.8)
    ours = np.asarray(warp(jnp.asarray(logits), config))
    scores = torch.tensor(logits)
    for warper in (TemperatureLogitsWarper(0.6), TopKLogitsWarper(12), TopPLogitsWarper(0.8)):
        scores = warper(None, scores)
    assert_same_kept(ours, scores.numpy(), rtol=1e-6)  # x / 0.6 may compile to x * (1 / 0.6)
    np.testing.assert_allclose(ours[[0, 1, 3]], scores.numpy()[[0, 1, 3]], rtol=1e-6, atol=0)


def test_sample_draws_from_the_warped_distribution():
    logits = jnp.asarray(np.log([[0.5, 0.25, 0.15, 0.1]] * 4000).astype(np.float32))
    config = SamplingConfig(temperature=1.0, top_k=3)
    tokens, logprobs = jax.jit(sample, static_argnums=2)(logits, jax.random.key(0), config)
    freq = np.bincount(np.asarray(tokens), minlength=4) / 4000
    expected = np.array([0.5, 0.25, 0.15, 0.0]) / 0.9
    np.testing.assert_allclose(freq, expected, atol=0.03)  # ~4 standard errors
    np.testing.assert_allclose(
        np.asarray(logprobs), np.log([0.5, 0.25, 0.15, 0.1])[np.asarray(tokens)], atol=1e-6
    )
    greedy, _ = sample(logits[:2], None, SamplingConfig())
    np.testing.assert_array_equal(np.asarray(greedy), [0, 0])


def test_bad_inputs_are_user_errors(loaded):
    _, model, params = loaded("gpt2")
    ids, mask = left_padded_prompts()
    with pytest.raises(UserError, match="not left-padded"):
        generate(model, params, ids, mask[:, ::-1], max_new_tokens=2)
    with pytest.raises(UserError, match="top_p"):
        generate(model, params, ids, mask, max_new_tokens=2, temperature=1.0, top_p=0.0)
    with pytest.raises(UserError, match="positions"):  # GPT-2's table has 256 positions
        generate(model, params, ids, mask, max_new_tokens=250)


# --------------------------------------------------------------------------- text and CLI
def tiny_tokenizer():
    """A word-level tokenizer over the tiny models' 128 ids, with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    vocab = {tok: i for i, tok in enumerate(specials + [f"w{i}" for i in range(123)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = (
        "<s>{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tokenizer


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory, loaded):
    """The tiny llama saved with the tokenizer above."""
    _, model, params = loaded("llama")
    directory = tmp_path_factory.mktemp("llama_chat")
    jm.save(directory, model, params, tokenizer=tiny_tokenizer())
    return str(directory)


PROMPTS = ["w5 w17 w3", "w40 w41 w42 w43 w44 w45 w46"]
PROMPT_ARGS = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]


def test_generate_text_applies_the_chat_template_like_transformers(chat_checkpoint):
    model, params = jm.load(chat_checkpoint)
    tokenizer = jm.load_tokenizer(chat_checkpoint)
    texts = generate_text(model, params, tokenizer, PROMPTS, max_new_tokens=8)

    hf = AutoModelForCausalLM.from_pretrained(chat_checkpoint, dtype=torch.float32).eval()
    tokenizer.padding_side = "left"
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    batch = tokenizer.apply_chat_template(
        chats, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = hf.generate(
            **batch,
            do_sample=False,
            max_new_tokens=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    ref = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert texts == ref
    assert texts != generate_text(model, params, tokenizer, PROMPTS, chat=False, max_new_tokens=8)


def test_cli_prints_answers(chat_checkpoint, capsys):
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["generate", "--model", chat_checkpoint, "--max-new-tokens", "8", *PROMPT_ARGS]
    )
    assert args.func(args) == 0
    model, params = jm.load(chat_checkpoint)
    expected = generate_text(
        model, params, jm.load_tokenizer(chat_checkpoint), PROMPTS, max_new_tokens=8
    )
    printed = capsys.readouterr().out
    assert printed == f"### {PROMPTS[0]}\n{expected[0]}\n\n### {PROMPTS[1]}\n{expected[1]}\n"


def test_cli_reports_a_bad_path_without_traceback(tmp_path, capsys):
    status = cli.main(["--model", str(tmp_path / "nope"), "--prompt", "hi"])
    err = capsys.readouterr().err
    assert status != 0
    assert "no such file or directory" in err and "Traceback" not in err
