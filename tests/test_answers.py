from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from bestofl.answers import extract_answer, grade, is_correct, model_response, normalize_number
from bestofl.languages import LANGUAGES, Language, register_language

THINK, ANSWER = "<|im_start|>think\n", "\n<|im_start|>answer\n"

# (response, language, expected answer): hard cases in every MGSM language and two more.
CASES = [
    # en: cues, boxes, currency, separators, fractions, signs
    ("She sells 9 eggs at $2 each.\nThe answer is $18.", "en", "18"),
    ("So the total is \\boxed{1,000}.", "en", "1000"),
    ("The answer is 1,000.5 dollars", "en", "1000.5"),
    ("The answer is 1.000", "en", "1"),
    ("Each gets \\boxed{\\frac{3}{4}} of a pie.", "en", "0.75"),
    ("\\boxed{18 \\text{ dollars}}", "en", "18"),
    ("She makes \\(\\boxed{\\$18}\\) a day.", "en", "18"),
    ("\\boxed{2\\frac{1}{2}}", "en", "2.5"),
    ("It cooled to −3 degrees. The answer is −3.", "en", "-3"),
    ("The answer is 9 × 2 = 18 dollars.", "en", "18"),
    ("**Final Answer:**\nJanet makes 18 dollars a day.", "en", "18"),
    ("The rate went up by 25%.\n\nAnswer: 25%", "en", "25"),
    ("I get \\boxed{42}. The format asks for \\boxed{} so I keep it.", "en", "42"),
    ("Thus John still has 2 sets. The answer is \\(\\boxed{Yes}\\).", "en", None),
    ("Let me compute 16 - 3 = 13. Then 13 - 4 =", "en", None),
    ("She has 13 eggs left. Then she", "en", None),
    ("Thus she pays 9 × 2 = 18 dollars.", "en", "18"),
    # de: "." groups, "," is the decimal point; "," before three digits still groups
    ("Die Antwort lautet 1.250 Euro.", "de", "1250"),
    ("Die Antwort lautet 2,5 Stunden.", "de", "2.5"),
    ("Insgesamt 1.000,50 €. Die Antwort lautet 1.000,50 €.", "de", "1000.5"),
    ("Die Antwort lautet \\boxed{1,000}", "de", "1000"),
    ("**Antwort:** Jordan würde in einer Woche **140 $** verdienen.", "de", "140"),
    # es / fr / ru: space and narrow no-break space group thousands
    ("La respuesta es 80 000 dólares.", "es", "80000"),
    ("La respuesta es 3,75 €", "es", "3.75"),
    ("Respuesta final: \\boxed{57\\ 500}", "es", "57500"),
    ("La réponse est 1\u202f500,5 €.", "fr", "1500.5"),
    ("Le total est de \\boxed{16,00\\ \\$}", "fr", "16"),
    ("Réponse : 12 pommes", "fr", "12"),
    ("Ответ: −250 рублей", "ru", "-250"),
    ("Ответ: 1\u00a0500 рублей.", "ru", "1500"),
    ("Окончательный ответ: 0,75", "ru", "0.75"),
    # zh / ja: cues run straight into the number; full-width digits
    ("所以他每周跑540米。\n答案是540米。", "zh", "540"),
    ("答案：１８元", "zh", "18"),
    ("最终答案是 \\boxed{\\dfrac{3}{4}}", "zh", "0.75"),
    ("したがって、答えは4分です。", "ja", "4"),
    ("答え：1,200円", "ja", "1200"),
    # th / bn / te: native digits, currency, Indian grouping, danda
    ("ดังนั้นคำตอบคือ ๑๘ บาท", "th", "18"),
    ("คำตอบคือ ฿1,250", "th", "1250"),
    ("সুতরাং, উত্তর হল ১৮ ডলার।", "bn", "18"),
    ("উত্তর: ৳১,০০,০০০", "bn", "100000"),
    ("সুতরাং মোট ৩/৪ অংশ বাকি।", "bn", "0.75"),
    ("కాబట్టి, సమాధానం ౧౨ రూపాయలు.", "te", "12"),
    ("సమాధానం: \\boxed{౫౪౦}", "te", "540"),
    # sw: prose and labelled cues
    ("Jibu ni 18.", "sw", "18"),
    ("Jibu la mwisho: John alitengeneza $109,200 kwa mwaka huo.", "sw", "109200"),
    ("Majibu ni 3 na 4. Jumla ni 7.", "sw", "7"),  # "jibu ni" inside a word is no cue
    # beyond MGSM: Devanagari and Arabic-Indic digits, Arabic decimal separator
    ("उत्तर है १८", "hi", "18"),
    ("उत्तर: ₹1,500", "hi", "1500"),
    ("الإجابة هي ٣٫٥", "ar", "3.5"),
    ("پاسخ ۱۲ است. The answer is ۱۲", None, "12"),
]


@pytest.mark.parametrize("response,lang,expected", CASES)
def test_extract_answer(response, lang, expected):
    assert extract_answer(response, lang) == expected


@pytest.mark.parametrize("response,lang", [
    (THINK + "She has 16 - 3 = 13 eggs, then 13 - 4 = 9", "en"),
    (THINK + "So the answer is 850. But wait, the plan has 1000 minutes, so", "en"),
    (THINK + "Also, die Antwort lautet 9 Eier. Aber vielleicht", "de"),
    (THINK + "首先，16 - 3 = 13，然后13 - 4 =", "zh"),
    (THINK + "Итого 9 яиц, значит ответ равен 18. Но подожди", "ru"),
    (THINK + "ดังนั้นคำตอบคือ ๙ แต่เดี๋ยวก่อน", "th"),
    (THINK + "Donc la réponse est 12. Attendez, 3 fois 4", "fr"),
])
def test_thinking_cut_off_has_no_answer(response, lang):
    assert extract_answer(response, lang) is None


def test_labelled_or_boxed_answer_in_cut_off_thinking_counts():
    # s1-style budget forcing appends "Final Answer:" when thinking runs out.
    assert extract_answer(THINK + "so 16 - 7 = 9. Final Answer: 9", "en") == "9"
    assert extract_answer(THINK + "I get \\boxed{76}. Wait, maybe the user", "en") == "76"
    assert extract_answer(THINK + "答案：12元。不过，再检查一下", "zh") == "12"


def test_answer_part_outranks_thinking():
    thinking = THINK + "13 × 1.1 = 14.3\nFinal Answer: \\boxed{14.3}"
    assert extract_answer(thinking + ANSWER + "The answer is 16.", "en") == "16"
    # An answer part that was itself cut off loses to what the thinking committed to.
    cut = ANSWER + "Answer: There were 30 cars. 5 of them left, so"
    assert extract_answer(THINK + "25 - 20 = 5.\n\\boxed{5}" + cut, "en") == "5"
    # Without any committed answer, the answer part's last sentence is read.
    heading = ANSWER + "Answer: Janet's ducks lay 16 eggs per day.\nShe sells 9, making 18 dollars."
    assert extract_answer(THINK + "16 - 7 = 9" + heading, "en") == "18"
    assert extract_answer("<think>2 + 5 = 7</think>\n\nShe has 7 apples.", "en") == "7"


@pytest.mark.parametrize("text,lang,expected", [
    ("18", None, "18"), ("18.00", None, "18"), ("-3", None, "-3"), ("−3", None, "-3"),
    ("2.50", None, "2.5"), ("3/4", None, "0.75"), ("\\frac{3}{4}", None, "0.75"),
    ("\\dfrac{400}{11}", None, "36.363636"), ("1/3", None, "0.333333"),
    ("$1,000.50", None, "1000.5"), ("25%", None, "25"), ("9 \\times 2 = 18", None, "18"),
    ("1.000,5", "de", "1000.5"), ("1,5", "de", "1.5"), ("1,000", "de", "1000"),
    ("0,750", "de", "0.75"), ("1.000", "de", "1000"), ("1.000", "en", "1"),
    ("1 000", "fr", "1000"), ("1,00,000", "hi", "100000"), ("৫০০", "bn", "500"),
    ("1,000,000", None, "1000000"), ("1.5 km", "es", "1.5"),
    ("no number here", None, None), ("", None, None),
])
def test_normalize_number(text, lang, expected):
    assert normalize_number(text, lang) == expected


def test_is_correct_and_grade():
    assert is_correct("18", 18) is True
    assert is_correct("18", "18.0") is True
    assert is_correct("0.75", "3/4") is True
    assert is_correct("1000", "1,000") is True
    assert is_correct("1000000.5", 1000000) is True  # relative tolerance 1e-6
    assert is_correct("18.001", 18) is False
    assert is_correct("0.000002", 0) is False  # absolute tolerance 1e-6
    assert is_correct("0", 1e-7) is True
    assert is_correct("Yes", "yes ") is False and is_correct("Yes", "Yes") is True
    assert is_correct(None, 18) is False
    assert is_correct("18", None) is None
    assert grade("The answer is 18", 18) == ("18", True)
    assert grade("The answer is 17", 18.0) == ("17", False)
    assert grade("Let me think", 18) == (None, False)
    assert grade("The answer is 18", None) == ("18", None)


def test_hostile_input_reads_as_no_answer():
    assert extract_answer("The answer is " + "9" * 5000) is None  # int() refuses 4,300+ digits
    assert normalize_number("1" * 5000) is None
    assert extract_answer("\\boxed{" * 1000 + "7") == "7"  # unclosed boxes, then the last number


def test_model_response_cuts_out_the_models_turn():
    transcript = ("<|im_start|>system\nAnswer in English.<|im_end|>\n<|im_start|>user\n"
                  "What is 16 - 7? Write it as \\boxed{99} style.<|im_end|>\n"
                  "<|im_start|>assistant\n<|im_start|>think\n16 - 7 = 9" + ANSWER
                  + "The answer is 9.<|im_end|>")
    response = model_response(transcript)
    assert response.startswith("<|im_start|>think") and response.endswith("The answer is 9.")
    assert "What is" not in response and "<|im_end|>" not in response
    assert grade(response, 9) == ("9", True)
    assert model_response("  just text \n") == "just text"


def test_registered_language_is_read_end_to_end():
    saved = dict(LANGUAGES)
    try:
        register_language(Language(code="my", name="Burmese", native_name="မြန်မာ",
                                   answer_cues=("အဖြေမှာ",), cot_instruction="",
                                   force_instruction="", digits="၀၁၂၃၄၅၆၇၈၉"))
        assert extract_answer("ဒါကြောင့် အဖြေမှာ ၁၈ ဖြစ်သည်", "my") == "18"
    finally:
        LANGUAGES.clear()
        LANGUAGES.update(saved)


# --- real traces --------------------------------------------------------------------------

TRACES = Path(__file__).resolve().parents[1].parent / "shared/data/xling-traces"
# One model/method in the languages where locale number formats trip the usual grader.
TRACE_FILES = [f"s1.1-14B/system/{lang}.jsonl.gz" for lang in ("es", "fr", "ru", "th", "zh")]


@pytest.fixture(scope="module")
def baseline():
    """The benchmark's "last \\boxed{} number" grader, loaded from its script."""
    path = Path(__file__).resolve().parents[1] / "benchmarks/answer_extraction.py"
    spec = importlib.util.spec_from_file_location("answer_extraction", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_traces_beat_last_boxed_number_in_every_language(baseline):
    if not all((TRACES / f).is_file() for f in TRACE_FILES):
        pytest.skip(f"xling-traces reference data not found under {TRACES}")
    gains = []
    for name in TRACE_FILES:
        lang = Path(name).name.removesuffix(".jsonl.gz")
        ours = base = 0
        with gzip.open(TRACES / name, "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                response = model_response(row["output"])
                answer, correct = grade(response, row["gold_answer"], lang)
                ours += bool(correct)
                base += baseline.baseline_correct(response, float(row["gold_answer"]))
                if answer is None:  # we read nothing only where no box holds a number
                    assert baseline.baseline_answer(response) is None, response[-300:]
        assert ours >= base, (name, ours, base)
        gains.append(ours - base)
    assert sum(gains) > 0  # boxes like "16,00 $" and "57 500" are read right
