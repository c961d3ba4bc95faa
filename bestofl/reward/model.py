"""The outcome reward model: any HF causal-LM or encoder backbone with a scalar head.

Scores are read at the last real token, found from the attention mask, so they do not
depend on the padding side or on whether pad == eos (OpenRLHF's approach).
"""
from __future__ import annotations

from typing import Sequence

import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel,
                          PreTrainedTokenizerBase)

from bestofl.hardware import resolve_dtype

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_reward_model(path: str, dtype: str = "float32", trust_remote_code: bool = False
                      ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A scalar-head model from a reward-model folder or any base checkpoint (new head)."""
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=DTYPES[resolve_dtype(dtype, torch.cuda.is_available())],
        use_safetensors=True, trust_remote_code=trust_remote_code,
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def rm_text(tokenizer: PreTrainedTokenizerBase, question: str, response: str) -> str:
    """The text the reward model reads: the chat a user and the policy had."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return f"Question: {question}\nAnswer: {response}"


def encode(tokenizer: PreTrainedTokenizerBase, question: str, response: str,
           max_length: int) -> list[int]:
    """Token ids, cut in the middle when too long: the question's start and the
    response's end (where the final answer is) both survive."""
    ids = tokenizer(rm_text(tokenizer, question, response), add_special_tokens=False)["input_ids"]
    if len(ids) <= max_length:
        return ids
    head = max_length // 4
    return ids[:head] + ids[len(ids) - (max_length - head):]


def collate(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence in the batch."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = 1
    return input_ids, mask


def _score_head(model: PreTrainedModel) -> torch.nn.Module:
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no scalar head (score/classifier)")
    return head


def forward_scores(model: PreTrainedModel, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
    """One scalar per sequence, read at its last real token (any padding side)."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids).last_hidden_state
    last = attention_mask.size(1) - 1 - attention_mask.long().flip(1).argmax(dim=1)
    pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    return _score_head(model)(pooled).squeeze(-1).float()


@torch.no_grad()
def score(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, questions: Sequence[str],
          responses: Sequence[str], max_length: int = 1024, batch_size: int = 16) -> list[float]:
    """Scores in input order; batches are grouped by length so little compute goes to pads."""
    encoded = [encode(tokenizer, q, r, max_length) for q, r in zip(questions, responses)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    out = [0.0] * len(encoded)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        input_ids, mask = collate([encoded[i] for i in idx], tokenizer.pad_token_id)
        values = forward_scores(model, input_ids.to(device), mask.to(device)).tolist()
        for i, v in zip(idx, values):
            out[i] = v
    return out
