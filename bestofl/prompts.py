"""Chat prompts that pose a math question and ask for reasoning in a chosen language.

Model-agnostic: one user turn (no system role, which some chat templates reject) holding
the question and the response language's instructions from the language registry. The
chat template of whichever model samples turns it into text (`prompt_text`).
"""
from __future__ import annotations

from typing import Any

from bestofl.languages import get_language


STYLES = ("cot", "brief")


def build_messages(question: str, question_lang: str, response_lang: str,
                   style: str = "cot") -> list[dict]:
    """Chat messages asking for an answer in `response_lang`.

    style cot asks for step-by-step reasoning, brief for the final number only (short
    outputs: weak models gain little from reasoning they cannot do). The instruction is
    written in the response language; when the question is posed in another language
    (language forcing) that language's force instruction follows it.
    """
    get_language(question_lang)  # an unknown code fails here, not deep inside a template
    target = get_language(response_lang)
    if style not in STYLES:
        raise ValueError(f"prompt style must be one of {', '.join(STYLES)}, got {style!r}")
    instruction = target.cot_instruction if style == "cot" else target.brief_instruction
    if not instruction:
        raise ValueError(f"language {response_lang!r} has no {style} instruction in the registry")
    parts = [question.strip(), instruction]
    if question_lang != response_lang:
        parts.append(target.force_instruction)
    return [{"role": "user", "content": "\n\n".join(parts)}]


def prompt_text(tokenizer: Any, messages: list[dict]) -> str:
    """The exact prompt text: the tokenizer's chat template with the assistant turn opened.

    A tokenizer without a chat template (a base model) gets the turns' text, blank-line
    separated, so plain causal LMs can still be sampled.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n\n"
