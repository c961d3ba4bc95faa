"""Prompts: the language registry's instructions, rendered by a model's chat template."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from bestofl.languages import UnknownLanguageError, get_language
from bestofl.prompts import build_messages, prompt_text

QUESTION = "Janet has 16 eggs. She eats 3. How many are left?"


def test_same_language_asks_for_reasoning_without_forcing():
    (msg,) = build_messages(QUESTION, "de", "de")
    de = get_language("de")
    assert msg["role"] == "user"
    assert msg["content"].startswith(QUESTION)
    assert de.cot_instruction in msg["content"]
    assert de.force_instruction not in msg["content"]


def test_forcing_adds_the_response_languages_instructions():
    (msg,) = build_messages(QUESTION, "en", "zh")
    zh, en = get_language("zh"), get_language("en")
    assert zh.cot_instruction in msg["content"] and zh.force_instruction in msg["content"]
    assert en.cot_instruction not in msg["content"]
    assert msg["content"].index(zh.cot_instruction) < msg["content"].index(zh.force_instruction)


@pytest.mark.parametrize("question_lang,response_lang,bad", [("xx", "en", "xx"),
                                                             ("en", "klingon", "klingon")])
def test_unknown_language_is_named(question_lang, response_lang, bad):
    with pytest.raises(UnknownLanguageError, match=bad):
        build_messages(QUESTION, question_lang, response_lang)


def test_render_uses_the_chat_template_and_opens_the_assistant_turn(tiny_lm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    text = prompt_text(tokenizer, build_messages(QUESTION, "en", "sw"))
    assert text.startswith("<|im_start|>user\n" + QUESTION)
    assert get_language("sw").force_instruction in text
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_render_without_chat_template_falls_back_to_plain_text(tiny_lm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    tokenizer.chat_template = None
    text = prompt_text(tokenizer, build_messages(QUESTION, "en", "en"))
    assert text == f"{QUESTION}\n\n{get_language('en').cot_instruction}\n\n"


def test_brief_style_asks_for_the_number_only():
    (msg,) = build_messages(QUESTION, "fr", "fr", "brief")
    fr = get_language("fr")
    assert msg["content"] == QUESTION + "\n\n" + fr.brief_instruction
    assert fr.cot_instruction not in msg["content"]
    with pytest.raises(ValueError, match="prompt style"):
        build_messages(QUESTION, "fr", "fr", "verbose")


def test_every_registered_language_has_every_instruction():
    from bestofl.languages import LANGUAGES

    for lang in LANGUAGES.values():
        assert lang.cot_instruction and lang.force_instruction and lang.brief_instruction, lang.code
