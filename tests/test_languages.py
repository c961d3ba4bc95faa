from __future__ import annotations

import pytest

from bestofl.languages import (
    LANGUAGES,
    Language,
    UnknownLanguageError,
    get_language,
    register_language,
    resolve_languages,
)

MGSM = ["bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"]


@pytest.fixture
def registry():
    """Lets a test register languages; the registry is restored afterwards."""
    saved = dict(LANGUAGES)
    yield LANGUAGES
    LANGUAGES.clear()
    LANGUAGES.update(saved)


def test_registry_covers_mgsm_with_ten_distinct_digits():
    assert set(MGSM) <= set(LANGUAGES)
    for code, language in LANGUAGES.items():
        assert language.code == code
        assert len(language.digits) == 10 and len(set(language.digits)) == 10
    assert get_language("bn").digits[7] == "৭"
    assert get_language("th").digits[3] == "๓"
    assert get_language("te").digits[9] == "౯"
    assert get_language("de").decimal_sep == "," and "." in get_language("de").group_seps
    assert "\u202f" in get_language("fr").group_seps


@pytest.mark.parametrize("code", sorted(LANGUAGES))
def test_prompts_ask_for_the_first_cue_and_a_box(code):
    language = get_language(code)
    assert language.answer_cues[0] in language.cot_instruction
    assert "\\boxed{N}" in language.cot_instruction
    # The forcing instruction is written in the language itself, not in English.
    assert language.force_instruction != get_language("en").force_instruction or code == "en"


def test_mgsm_native_cues():
    assert get_language("de").answer_cues[0] == "Die Antwort lautet"
    assert get_language("zh").answer_cues[0] == "答案是"
    assert get_language("ja").answer_cues[0] == "答えは"
    assert get_language("sw").answer_cues[0] == "Jibu ni"
    assert get_language("ru").answer_cues[0] == "Ответ:"


def test_unknown_code_names_it_and_lists_known_codes():
    with pytest.raises(UnknownLanguageError) as info:
        get_language("xx")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "'xx'" in message
    assert all(code in message for code in MGSM)


def test_register_adds_and_replaces(registry):
    my = Language(code="my", name="Burmese", native_name="မြန်မာ",
                  answer_cues=("အဖြေမှာ",), cot_instruction="...", force_instruction="...",
                  digits="၀၁၂၃၄၅၆၇၈၉")
    register_language(my)
    assert get_language("my") is my
    assert "my" in resolve_languages(None)
    replaced = Language(code="my", name="Myanmar", native_name="မြန်မာ",
                        answer_cues=("အဖြေ",), cot_instruction="...", force_instruction="...")
    register_language(replaced)
    assert get_language("my").name == "Myanmar"


def test_register_rejects_a_digit_set_that_is_not_ten_long(registry):
    with pytest.raises(ValueError, match="digits"):
        register_language(Language(code="zz", name="Z", native_name="Z", answer_cues=("A",),
                                   cot_instruction="", force_instruction="", digits="012"))
    assert "zz" not in LANGUAGES


def test_resolve_languages():
    assert resolve_languages(None) == sorted(LANGUAGES)
    assert resolve_languages([]) == sorted(LANGUAGES)
    assert resolve_languages(None, available={"zh", "de", "en"}) == ["de", "en", "zh"]
    assert resolve_languages(["zh", "en", "zh", "de", "en"]) == ["zh", "en", "de"]
    with pytest.raises(UnknownLanguageError, match="'klingon'"):
        resolve_languages(["en", "klingon"])
