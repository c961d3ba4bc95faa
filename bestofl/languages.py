"""The language registry: names, answer cues, prompts and number conventions per language.

Prompts and cues are written natively; the answer cues follow the MGSM paper's native
chain-of-thought exemplars ("Die Antwort lautet", "答案是", ...). Number conventions say
how a locale writes 1 000,5 so that answers can be read back (see bestofl.answers).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Space-like characters that group thousands in print (no-break, narrow no-break).
_NBSP, _NNBSP = "\u00a0", "\u202f"


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    native_name: str
    # First cue is the one prompts ask for; the rest are variants models also write.
    # Cues ending in ":" are labels ("Ответ:"), the others read as prose ("Jibu ni").
    answer_cues: tuple[str, ...]
    cot_instruction: str
    force_instruction: str
    # Asks for the answer without reasoning (prompt: brief): short outputs for weak models.
    brief_instruction: str = ""
    digits: str = "0123456789"
    decimal_sep: str = "."
    group_seps: tuple[str, ...] = (",",)


class UnknownLanguageError(ValueError):
    """A language code that is not in the registry."""


LANGUAGES: dict[str, Language] = {}


def register_language(language: Language) -> None:
    """Add a language to the registry, replacing any earlier one with the same code."""
    if len(language.digits) != 10:
        raise ValueError(f"{language.code}: digits must list 10 characters, 0 to 9")
    LANGUAGES[language.code] = language


def get_language(code: str) -> Language:
    try:
        return LANGUAGES[code]
    except KeyError:
        raise UnknownLanguageError(
            f"unknown language code {code!r}; known codes: {', '.join(sorted(LANGUAGES))}"
        ) from None


def resolve_languages(codes: Sequence[str] | None,
                      available: Iterable[str] | None = None) -> list[str]:
    """Validate a user's language list: None or empty means all (of `available` if given).

    Keeps the given order and drops repeats; every code must be registered.
    """
    if not codes:
        codes = sorted(available) if available is not None else sorted(LANGUAGES)
    resolved: list[str] = []
    for code in codes:
        get_language(code)
        if code not in resolved:
            resolved.append(code)
    return resolved


for _language in (
    Language(
        code="en", name="English", native_name="English",
        answer_cues=("The answer is", "The final answer is", "Final answer:", "Answer:"),
        cot_instruction=('Solve the problem step by step. End with the line '
                         '"The answer is \\boxed{N}", where N is the final number.'),
        force_instruction="Think step by step and answer only in English.",
        brief_instruction="Answer with the final number.",
    ),
    Language(
        code="de", name="German", native_name="Deutsch",
        answer_cues=("Die Antwort lautet", "Die endgültige Antwort lautet",
                     "Die Antwort ist", "Endgültige Antwort:", "Antwort:"),
        cot_instruction=('Löse die Aufgabe Schritt für Schritt. Schließe mit der Zeile '
                         '"Die Antwort lautet \\boxed{N}", wobei N die endgültige Zahl ist.'),
        force_instruction="Denke Schritt für Schritt nach und antworte ausschließlich auf Deutsch.",
        brief_instruction="Antworte mit der endgültigen Zahl.",
        decimal_sep=",", group_seps=(".", " ", _NBSP, _NNBSP),
    ),
    Language(
        code="es", name="Spanish", native_name="Español",
        answer_cues=("La respuesta es", "La respuesta final es", "Respuesta final:",
                     "Respuesta:"),
        cot_instruction=('Resuelve el problema paso a paso. Termina con la línea '
                         '"La respuesta es \\boxed{N}", donde N es el número final.'),
        force_instruction="Piensa paso a paso y responde únicamente en español.",
        brief_instruction="Responde con el número final.",
        decimal_sep=",", group_seps=(" ", _NBSP, _NNBSP),
    ),
    Language(
        code="fr", name="French", native_name="Français",
        answer_cues=("La réponse est", "La réponse finale est", "Réponse finale :",
                     "Réponse finale:", "Réponse :", "Réponse:"),
        cot_instruction=('Résous le problème étape par étape. Termine par la ligne '
                         '« La réponse est \\boxed{N} », où N est le nombre final.'),
        force_instruction="Réfléchis étape par étape et réponds uniquement en français.",
        brief_instruction="Réponds avec le nombre final.",
        decimal_sep=",", group_seps=(" ", _NNBSP, _NBSP),
    ),
    Language(
        code="ru", name="Russian", native_name="Русский",
        answer_cues=("Ответ:", "Окончательный ответ:", "Ответ равен", "Ответ —"),
        cot_instruction=('Реши задачу шаг за шагом. В конце напиши строку '
                         '«Ответ: \\boxed{N}», где N — итоговое число.'),
        force_instruction="Рассуждай шаг за шагом и отвечай только на русском языке.",
        brief_instruction="Ответь итоговым числом.",
        decimal_sep=",", group_seps=(" ", _NBSP, _NNBSP),
    ),
    Language(
        code="zh", name="Chinese", native_name="中文",
        answer_cues=("答案是", "最终答案是", "最终答案：", "最终答案:", "答案：", "答案:", "答："),
        cot_instruction="请一步一步地解答这道题。最后以“答案是 \\boxed{N}”结尾，其中 N 是最终的数字。",
        force_instruction="请一步一步地思考，并且只用中文回答。",
        brief_instruction="请用最终的数字回答。",
    ),
    Language(
        code="ja", name="Japanese", native_name="日本語",
        answer_cues=("答えは", "最終的な答えは", "最終的な答え：", "答え：", "答え:", "解答："),
        cot_instruction=("この問題を段階的に解いてください。最後は「答えは \\boxed{N} です」"
                         "という一文で締めくくってください（N は最終的な数値）。"),
        force_instruction="段階的に考え、日本語だけで答えてください。",
        brief_instruction="最終的な数字で答えてください。",
    ),
    Language(
        code="th", name="Thai", native_name="ไทย",
        answer_cues=("คำตอบคือ", "คำตอบสุดท้ายคือ", "คำตอบสุดท้าย:", "คำตอบ:"),
        cot_instruction=('จงแก้โจทย์นี้ทีละขั้นตอน แล้วจบด้วยบรรทัด "คำตอบคือ \\boxed{N}" '
                         'โดยที่ N คือตัวเลขคำตอบสุดท้าย'),
        force_instruction="คิดทีละขั้นตอนและตอบเป็นภาษาไทยเท่านั้น",
        brief_instruction="ตอบด้วยตัวเลขสุดท้าย",
        digits="๐๑๒๓๔๕๖๗๘๙",
    ),
    Language(
        code="sw", name="Swahili", native_name="Kiswahili",
        answer_cues=("Jibu ni", "Jibu la mwisho ni", "Jibu la mwisho:", "Jibu:"),
        cot_instruction=('Tatua swali hili hatua kwa hatua. Malizia kwa mstari '
                         '"Jibu ni \\boxed{N}", ambapo N ni namba ya mwisho.'),
        force_instruction="Fikiri hatua kwa hatua na ujibu kwa Kiswahili pekee.",
        brief_instruction="Jibu kwa namba ya mwisho.",
    ),
    Language(
        code="bn", name="Bengali", native_name="বাংলা",
        answer_cues=("উত্তর হল", "উত্তর হলো", "চূড়ান্ত উত্তর:", "উত্তর:"),
        cot_instruction=('সমস্যাটি ধাপে ধাপে সমাধান করো। শেষে "উত্তর হল \\boxed{N}" '
                         'লাইনটি লেখো, যেখানে N হল চূড়ান্ত সংখ্যা।'),
        force_instruction="ধাপে ধাপে চিন্তা করো এবং শুধুমাত্র বাংলায় উত্তর দাও।",
        brief_instruction="চূড়ান্ত সংখ্যা দিয়ে উত্তর দাও।",
        digits="০১২৩৪৫৬৭৮৯",
    ),
    Language(
        code="te", name="Telugu", native_name="తెలుగు",
        answer_cues=("సమాధానం", "తుది సమాధానం:", "సమాధానం:", "జవాబు:"),
        cot_instruction=('ఈ సమస్యను దశలవారీగా పరిష్కరించండి. చివరగా "సమాధానం \\boxed{N}" '
                         'అనే పంక్తితో ముగించండి, ఇక్కడ N తుది సంఖ్య.'),
        force_instruction="దశలవారీగా ఆలోచించి, కేవలం తెలుగులో మాత్రమే సమాధానం ఇవ్వండి.",
        brief_instruction="తుది సంఖ్యతో సమాధానం ఇవ్వండి.",
        digits="౦౧౨౩౪౫౬౭౮౯",
    ),
    # Beyond MGSM: two more scripts with their own digits, to keep the registry honest.
    Language(
        code="hi", name="Hindi", native_name="हिन्दी",
        answer_cues=("उत्तर है", "अंतिम उत्तर:", "उत्तर:"),
        cot_instruction=('इस प्रश्न को चरण-दर-चरण हल करें। अंत में "उत्तर है \\boxed{N}" '
                         'पंक्ति लिखें, जहाँ N अंतिम संख्या है।'),
        force_instruction="चरण-दर-चरण सोचें और केवल हिन्दी में उत्तर दें।",
        brief_instruction="अंतिम संख्या के साथ उत्तर दें।",
        digits="०१२३४५६७८९",
    ),
    Language(
        code="ar", name="Arabic", native_name="العربية",
        answer_cues=("الإجابة هي", "الجواب هو", "الإجابة النهائية:", "الإجابة:"),
        cot_instruction=('حل المسألة خطوة بخطوة. اختم بالسطر "الإجابة هي \\boxed{N}"، '
                         'حيث N هو العدد النهائي.'),
        force_instruction="فكّر خطوة بخطوة وأجب باللغة العربية فقط.",
        brief_instruction="أجب بالرقم النهائي.",
        digits="٠١٢٣٤٥٦٧٨٩", decimal_sep="٫", group_seps=("٬", ","),
    ),
):
    register_language(_language)
