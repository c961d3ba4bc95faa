"""Reading the final numeric answer out of a free-form response, and grading it.

A part of a response *states* an answer with its last `\\boxed{}` that holds a number, or
else with the last answer cue ("The answer is", "答案是", "Ответ:" ...) that introduces one.
Where to look, in order: the answer part of a reasoning trace (after the thinking); then
what the thinking committed to (a box, or a labelled cue such as "Final Answer: 18");
last, the last number of the answer part's last sentence. Thinking that never ended was
cut off: it gets no last-number guess, since an intermediate number is not an answer.
Responses without thinking markers count as answer parts.
"""
from __future__ import annotations

import math
import re
from bisect import bisect_left
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache

from bestofl.languages import LANGUAGES, Language, get_language

# Digit sets beyond the registry's (Persian/Urdu Arabic-Indic, full-width): always read.
_EXTRA_DIGITS = ("۰۱۲۳۴۵۶۷۸۹", "０１２３４５６７８９", "٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९")
_MINUS = {"\u2212": "-", "\uff0d": "-", "\ufe63": "-"}
# LaTeX and typographic spaces between digits group thousands ("1\,000", "8\ 000").
_THIN_SPACE_RE = re.compile(r"(\d)(?:\\[,;:! ]|~|[\u00a0\u2009\u2007\u202f])(?=\d)")
_TEXT_MACRO_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_BOX_OR_BRACE_RE = re.compile(r"\\(?:boxed|fbox)\s*\{|[{}]")
# ChatML turn markers; reasoning models open/close their thinking with these.
_ASSISTANT = "<|im_start|>assistant"
_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
_THINK_OPEN = ("<|im_start|>think", "<think>")
_THINK_CLOSE = ("<|im_start|>answer", "</think>")
# English variants models write whatever language they reason in.
_COMMON_CUES = ("Final Answer", "Final Answer:", "The final answer is", "the answer is",
                "Answer:")
_CURRENCY = r"(?:\\?\$|[€£¥₹৳฿₦]|Rs\.?|US\$)"
_OPERATOR_RE = re.compile(r"\s*(?:[-+*/×÷·x=]|\\times|\\cdot|\\div)\s*")
_TAIL_CHARS = 4000
_MAX_NUMBER_CHARS = 200
_LABEL_RE = re.compile(r"[ \t]*[:：\n]")
_WORD_RE = re.compile(r"[^\W_]")
_DANGLING_RE = re.compile(r"(?:[-+*/×÷=]|\\times|\\cdot)\s*$")
_SENTENCE_END_RE = re.compile(r"\n|[。！？!?।]|\.(?!\d)")


@dataclass(frozen=True)
class _Num:
    start: int
    end: int
    value: Fraction


def model_response(output: str) -> str:
    """The part of a chat transcript that the model wrote (after the last assistant header).

    Text without a ChatML assistant header is returned whole; end-of-turn tokens are dropped.
    """
    at = output.rfind(_ASSISTANT)
    text = output[at + len(_ASSISTANT):] if at >= 0 else output
    for token in _END_TOKENS:
        text = text.replace(token, "")
    return text.strip()


def normalize_number(text: str, lang: str | None = None) -> str | None:
    """Canonical form of the number `text` states: "18", "-3", "2.5", "0.75" (3/4), or None.

    The first number counts, or the first after the last "=" ("9 \\times 2 = 18" is 18).
    """
    language = get_language(lang) if lang else None
    value = _value_of(_clean(text), language)
    return None if value is None else _format(value)


def extract_answer(response: str, lang: str | None = None) -> str | None:
    """The normalised final answer of a response, or None where it states none."""
    language = get_language(lang) if lang else None
    text = _clean(response)
    close_at, close_len = max((text.rfind(m), len(m)) for m in _THINK_CLOSE)
    if close_at >= 0:
        answer_part, thinking = text[close_at + close_len:], text[:close_at]
        # A committed answer anywhere beats guessing from an answer part that may be cut off.
        searches = [lambda: _stated(answer_part, language, labels_only=False),
                    lambda: _stated(thinking, language, labels_only=True),
                    lambda: _last_sentence_number(answer_part, language)]
    elif any(m in text for m in _THINK_OPEN):  # thinking that never ended: no conclusion
        searches = [lambda: _stated(text, language, labels_only=True)]
    else:
        searches = [lambda: _stated(text, language, labels_only=False),
                    lambda: _last_sentence_number(text, language)]
    for search in searches:
        value = search()
        if value is not None:
            return _format(value)
    return None


def is_correct(answer: str | None, gold: str | int | float | None) -> bool | None:
    """Whether `answer` equals `gold` numerically (tolerance 1e-6); None if gold is unknown."""
    if gold is None:
        return None
    if answer is None:
        return False
    a = normalize_number(str(answer))
    # Numeric gold is taken as is: str() of a float may read "1e-07".
    g = float(gold) if isinstance(gold, (int, float)) else normalize_number(str(gold))
    if a is None or g is None:
        return str(answer).strip() == str(gold).strip()
    return math.isclose(float(a), float(g), rel_tol=1e-6, abs_tol=1e-6)


def grade(response: str, gold: str | int | float | None,
          lang: str | None = None) -> tuple[str | None, bool | None]:
    """(extracted answer, whether it is correct)."""
    answer = extract_answer(response, lang)
    return answer, is_correct(answer, gold)


# --- reading numbers ---------------------------------------------------------------------

def _clean(text: str) -> str:
    """ASCII digits and minus signs, no markdown bold, LaTeX separators made plain."""
    chars_re, table = _native_chars(tuple(lang.digits for lang in LANGUAGES.values()))
    text = chars_re.sub(lambda m: table[m.group()], text).replace("**", "")
    text = text.replace("{,}", ",").replace("{.}", ".")
    return _THIN_SPACE_RE.sub("\\1\u202f", text)


@lru_cache(maxsize=8)
def _native_chars(registry_digits: tuple[str, ...]) -> tuple[re.Pattern[str], dict[str, str]]:
    """A pattern for every non-ASCII digit and minus sign, and their ASCII forms."""
    table = dict(_MINUS)
    for digits in (*registry_digits, *_EXTRA_DIGITS):
        table.update({ch: str(i) for i, ch in enumerate(digits) if not ch.isascii()})
    return re.compile("[" + re.escape("".join(table)) + "]"), table


@lru_cache(maxsize=64)
def _number_re(language: Language | None) -> re.Pattern[str]:
    seps = "".join(re.escape(s) for s in _separators(language)[2] if s != " ")
    space = r"|(?<=\d)[ ](?=\d{3}(?!\d))" if language and " " in language.group_seps else ""
    digits = rf"\d+(?:(?:[{seps}]{space})\d+)*"
    return re.compile(rf"""
        (?<![A-Za-z0-9.,^_])(?P<neg>-)?(?:{_CURRENCY}\s?)?
        (?: \\[dt]?frac\s*\{{\s*(?P<fn>\d+)\s*\}}\s*\{{\s*(?P<fd>\d+)\s*\}}
          | (?P<int>{digits})
            (?: \s*\\[dt]?frac\s*\{{\s*(?P<mn>\d+)\s*\}}\s*\{{\s*(?P<md>\d+)\s*\}}
              | \s*/\s*(?P<den>\d+)(?![\d.,/]) )?
        )""", re.VERBOSE | re.ASCII)


def _separators(language: Language | None) -> tuple[set[str], set[str], set[str]]:
    """(decimal, group, all) separator characters for a locale.

    "," before exactly three digits groups thousands in every language: models write
    30,769.23 whatever language they reason in; "." is a decimal point everywhere.
    """
    decimal = {".", "\u066b"} | ({language.decimal_sep} if language else set())
    group = {",", "\u202f", "\u066c"} | (set(language.group_seps) if language else set())
    return decimal, group, decimal | group


def _numbers(text: str, language: Language | None) -> list[_Num]:
    found = []
    for m in _number_re(language).finditer(text):
        if m.end() - m.start() > _MAX_NUMBER_CHARS:  # int() refuses 4,300+ digits
            continue
        sign = -1 if m["neg"] else 1
        if m["fn"] is not None:
            values = [_ratio(int(m["fn"]), int(m["fd"]))]
        else:
            values = _read_digits(m["int"], language)
            if m["md"] is not None and len(values) == 1:
                values = [values[0] + _ratio(int(m["mn"]), int(m["md"]))]
            elif m["den"] is not None and len(values) == 1 and values[0].denominator == 1:
                values = [_ratio(values[0], int(m["den"]))]
        found += [_Num(m.start(), m.end(), sign * v) for v in values if v is not None]
    return found


def _ratio(numerator: int | Fraction, denominator: int) -> Fraction | None:
    return Fraction(numerator, denominator) if denominator else None


def _read_digits(token: str, language: Language | None) -> list[Fraction]:
    """One digit string with separators -> its value; an impossible grouping -> its pieces."""
    parts = re.split(r"(\D)", token)
    runs, seps = parts[0::2], parts[1::2]
    if not seps:
        return [Fraction(int(token))]
    decimal, group, _ = _separators(language)
    last = seps[-1]
    if len(set(seps)) > 1:  # 1.000,5 / 1,000.5: the last one is the decimal point
        decimal_last = last in decimal
    elif len(seps) > 1:  # 1.000.000: a repeated separator groups
        decimal_last = False
    elif last in decimal and last in group:  # 1,000 vs 1,5 in a decimal-comma locale
        decimal_last = len(runs[-1]) != 3 or runs[0].startswith("0")
    else:
        decimal_last = last in decimal
    int_runs, int_seps = (runs[:-1], seps[:-1]) if decimal_last else (runs, seps)
    if _is_grouping(int_runs, int_seps):
        whole = "".join(int_runs)
        return [Fraction(f"{whole}.{runs[-1]}") if decimal_last else Fraction(int(whole))]
    return [Fraction(int(run)) for run in runs]


def _is_grouping(runs: list[str], seps: list[str]) -> bool:
    if not seps:
        return True
    if len(set(seps)) > 1 or runs[0].startswith("0"):
        return False
    if len(runs[0]) <= 3 and all(len(r) == 3 for r in runs[1:]):
        return True
    # Indian grouping: 1,00,000 (lakh) and 1,00,00,000 (crore).
    return len(runs[0]) <= 2 and len(runs[-1]) == 3 and all(len(r) == 2 for r in runs[1:-1])


def _value_of(text: str, language: Language | None) -> Fraction | None:
    """The number a short text (a box, a gold value) states."""
    text = _TEXT_MACRO_RE.sub(r" \1 ", text)
    nums = _numbers(text, language)
    if not nums:
        return None
    eq = text.rfind("=")
    after = [n for n in nums if n.start > eq]
    return (after or nums)[0].value


def _format(value: Fraction) -> str:
    value = round(value, 6)
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{Decimal(value.numerator) / Decimal(value.denominator):.6f}"
    return text.rstrip("0").rstrip(".")


# --- finding the final answer ------------------------------------------------------------

def _stated(region: str, language: Language | None, labels_only: bool) -> Fraction | None:
    """The number in the last numeric \\boxed{}, else the one the last answer cue introduces."""
    for content in reversed(_boxes(region)):
        value = _value_of(content, language)
        if value is not None:
            return value
    return _from_cues(region, language, labels_only)


def _boxes(text: str) -> list[str]:
    """Contents of every closed \\boxed{...}, nested braces included, in order of opening."""
    found, stack = [], []  # stack: content start of an open box, or -1 for a plain brace
    for m in _BOX_OR_BRACE_RE.finditer(text):
        if m.group() == "}":
            if stack and (start := stack.pop()) >= 0:
                found.append((start, text[start:m.start()]))
        else:
            stack.append(m.end() if len(m.group()) > 1 else -1)
    return [content for _, content in sorted(found)]


@lru_cache(maxsize=8)
def _cue_re(cues: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = []
    for cue in sorted(set(cues), key=len, reverse=True):
        pattern = re.escape(cue).replace(r"\ ", r"\s+")
        if _is_word_char(cue[0]):
            pattern = r"(?<![^\W\d_])" + pattern
        if _is_word_char(cue[-1]):
            pattern += r"(?![^\W\d_])"
        alternatives.append(pattern)
    # The look-ahead on first letters lets most positions fail fast on long traces.
    first = "".join(sorted({ch for cue in cues for ch in (cue[0].lower(), cue[0].upper())}))
    return re.compile(f"(?=[{re.escape(first)}])(?:{'|'.join(alternatives)})", re.IGNORECASE)


def _is_word_char(ch: str) -> bool:
    # Latin and Cyrillic words need boundaries; CJK, Thai and Indic cues run into the number.
    return ch.isalpha() and ord(ch) < 0x0530


def _from_cues(region: str, language: Language | None, labels_only: bool) -> Fraction | None:
    # Answers sit at the end: try the last few KB (from a line start) before the whole text.
    tail = region.find("\n", len(region) - _TAIL_CHARS)
    for text in ([region[tail:]] if tail > 0 else []) + [region]:
        value = _last_cue_value(text, language, labels_only)
        if value is not None:
            return value
    return None


def _last_cue_value(region: str, language: Language | None,
                    labels_only: bool) -> Fraction | None:
    cues = tuple(c for lang in LANGUAGES.values() for c in lang.answer_cues) + _COMMON_CUES
    matches = [m for m in _cue_re(cues).finditer(region)
               if not labels_only or m.group().rstrip().endswith((":", "："))
               or _LABEL_RE.match(region, m.end())]
    nums = _numbers(region, language) if matches else []
    starts = [n.start for n in nums]
    for m in reversed(matches):
        value = _cue_value(region, m.end(), nums, bisect_left(starts, m.end()))
        if value is not None:
            return value
    return None


def _cue_value(region: str, at: int, nums: list[_Num], first: int) -> Fraction | None:
    """The number a cue introduces: the one right after it, else the last of its sentence."""
    if first == len(nums):
        return None
    gap = region[at:nums[first].start]
    if len(gap) < 80 and not any(ch.isalnum() for ch in gap) and gap.count("\n") <= 2:
        return _chain_result(region, nums, first)
    # Otherwise only a cue opening the text's last sentence: "Answer: she pays 18 dollars."
    end = _SENTENCE_END_RE.search(region, _WORD_RE.search(region, at).start())
    if end is None or not _WORD_RE.search(region, end.end()):
        return nums[-1].value
    return None


def _chain_result(region: str, nums: list[_Num], i: int) -> Fraction:
    """"9 × 2 = 18" read from its first number gives 18; a lone number gives itself."""
    result = nums[i].value
    while i + 1 < len(nums):
        between = region[nums[i].end:nums[i + 1].start]
        if not _OPERATOR_RE.fullmatch(between):
            break
        i += 1
        if "=" in between:
            result = nums[i].value
    return result


def _last_sentence_number(region: str, language: Language | None) -> Fraction | None:
    """The last number of the text's last sentence; None if that sentence has none."""
    for line in reversed(region.strip().splitlines()):
        sentences = [s for s in _SENTENCE_END_RE.split(line) if any(c.isalnum() for c in s)]
        if sentences:
            if _DANGLING_RE.search(sentences[-1]):  # "20 + 4 +": cut off mid-calculation
                return None
            nums = _numbers(sentences[-1], language)
            return nums[-1].value if nums else None
    return None
