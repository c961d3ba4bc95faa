"""The project's own grade-school word problems: seeded, multilingual, exact answers.

For offline runs (`questions=generated:<n>[:seed][:easy]`). Each problem draws its numbers and
template once from the seed and is then written natively in every language, so a qid is
the same problem everywhere and the languages asked for never change the problems.
Deliberately easy: most are one step, the rest take two operations. The `easy` level
keeps to one step with single-digit numbers: problems the demo's 135M model sometimes gets
right, where the standard ones are mostly beyond it. All answers are positive integers.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from bestofl.languages import resolve_languages

LANGUAGES = ("en", "de", "es", "fr", "ru", "zh", "ja")

# Index-aligned across languages: name i is one common local name, not a translation.
NAMES = {
    "en": ["Anna", "Ben", "Maya", "Leo", "Sara", "Tom", "Nora", "Sam"],
    "de": ["Anna", "Lukas", "Mia", "Jonas", "Lena", "Felix", "Emma", "Paul"],
    "es": ["Lucía", "Mateo", "Sofía", "Diego", "Elena", "Pablo", "Carmen", "Hugo"],
    "fr": ["Léa", "Hugo", "Chloé", "Louis", "Manon", "Jules", "Camille", "Théo"],
    "zh": ["小明", "小红", "小丽", "小刚", "小芳", "小军", "小华", "小东"],
    "ja": ["さくら", "はると", "ゆい", "そうた", "あおい", "ゆうと", "ひな", "れん"],
    # Russian needs the cases: (nominative, genitive, dative).
    "ru": [("Маша", "Маши", "Маше"), ("Петя", "Пети", "Пете"), ("Аня", "Ани", "Ане"),
           ("Саша", "Саши", "Саше"), ("Оля", "Оли", "Оле"), ("Коля", "Коли", "Коле"),
           ("Таня", "Тани", "Тане"), ("Миша", "Миши", "Мише")],
}
# Countable things. es carries the gender (cuántos/cuántas); zh a measure word; ja a
# counter; ru the three number forms (1, 2-4, 5+) of a masculine or neuter inanimate noun,
# whose accusative equals the nominative. French nouns avoid a leading vowel ("de pommes").
ITEMS = {
    "en": ["apples", "pencils", "cookies", "marbles", "balls", "notebooks", "candies"],
    "de": ["Äpfel", "Bleistifte", "Kekse", "Murmeln", "Bälle", "Hefte", "Bonbons"],
    "es": [("manzanas", "f"), ("lápices", "m"), ("galletas", "f"), ("canicas", "f"),
           ("pelotas", "f"), ("cuadernos", "m"), ("caramelos", "m")],
    "fr": ["pommes", "crayons", "biscuits", "billes", "balles", "cahiers", "bonbons"],
    "zh": [("苹果", "个"), ("铅笔", "支"), ("饼干", "块"), ("弹珠", "颗"), ("球", "个"),
           ("笔记本", "本"), ("糖果", "颗")],
    "ja": [("りんご", "個"), ("鉛筆", "本"), ("クッキー", "枚"), ("ビー玉", "個"),
           ("ボール", "個"), ("ノート", "冊"), ("あめ", "個")],
    "ru": [("яблоко", "яблока", "яблок"), ("карандаш", "карандаша", "карандашей"),
           ("печенье", "печенья", "печений"), ("шарик", "шарика", "шариков"),
           ("мяч", "мяча", "мячей"), ("блокнот", "блокнота", "блокнотов"),
           ("леденец", "леденца", "леденцов")],
}
RUB, YEARS, HOURS = ("рубль", "рубля", "рублей"), ("год", "года", "лет"), ("час", "часа", "часов")
KM, BOXES = ("километр", "километра", "километров"), ("коробка", "коробки", "коробок")


def ru(n: int, forms: tuple[str, str, str]) -> str:
    """"n noun" with the Russian number form: 1 / 2-4 / 5+ (11-14 take the 5+ form)."""
    if n % 10 == 1 and n % 100 != 11:
        return f"{n} {forms[0]}"
    if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
        return f"{n} {forms[1]}"
    return f"{n} {forms[2]}"


@dataclass
class Words:
    """One problem's names and item in one language; `g` is the Spanish gender ending."""

    name: Any
    other: Any
    item: Any
    g: str = ""


def _words(lang: str, name: int, other: int, item: int) -> Words:
    words = Words(NAMES[lang][name], NAMES[lang][other], ITEMS[lang][item])
    if lang == "es":
        words.item, gender = words.item
        words.g = "as" if gender == "f" else "os"
    return words


# Each template: (draw numbers -> (numbers, answer), weight, {lang: text(words, numbers)}).
Text = Callable[[Words, dict], str]


def _add(r: random.Random, top: int = 20) -> tuple[dict, int]:
    p = {"a": r.randint(2, top), "b": r.randint(2, top)}
    return p, p["a"] + p["b"]


def _subtract(r: random.Random, top: int = 40) -> tuple[dict, int]:
    a = r.randint(8, top)
    p = {"a": a, "b": r.randint(2, a - 3)}
    return p, p["a"] - p["b"]


def _shopping(r: random.Random, top: int = 12) -> tuple[dict, int]:
    p = {"a": r.randint(2, min(9, top)), "p": r.randint(2, top)}
    return p, p["a"] * p["p"]


def _sharing(r: random.Random) -> tuple[dict, int]:
    k, each = r.randint(2, 6), r.randint(2, 10)
    return {"t": k * each, "k": k}, each


def _speed(r: random.Random) -> tuple[dict, int]:
    p = {"v": 5 * r.randint(4, 18), "t": r.randint(2, 6)}
    return p, p["v"] * p["t"]


def _travel_time(r: random.Random) -> tuple[dict, int]:
    v, t = r.randint(8, 25), r.randint(2, 6)
    return {"d": v * t, "v": v}, t


def _ages(r: random.Random) -> tuple[dict, int]:
    p = {"a": r.randint(5, 15), "d": r.randint(2, 9), "y": r.randint(2, 10)}
    return p, p["a"] + p["d"] + p["y"]


def _change(r: random.Random) -> tuple[dict, int]:
    a, price = r.randint(2, 5), r.randint(2, 9)
    bill = next(b for b in (10, 20, 50) if b > a * price)
    return {"a": a, "p": price, "b": bill}, bill - a * price


def _boxes(r: random.Random) -> tuple[dict, int]:
    p = {"k": r.randint(2, 6), "m": r.randint(2, 10), "e": r.randint(2, 9)}
    return p, p["k"] * p["m"] + p["e"]


TEMPLATES: dict[str, tuple[Callable, float, dict[str, Text]]] = {
    "add": (_add, 1.0, {
        "en": lambda w, p: f"{w.name} has {p['a']} {w.item}. {w.name} buys {p['b']} more {w.item}. "
                           f"How many {w.item} does {w.name} have now?",
        "de": lambda w, p: f"{w.name} hat {p['a']} {w.item}. {w.name} kauft noch {p['b']} {w.item} dazu. "
                           f"Wie viele {w.item} hat {w.name} jetzt?",
        "es": lambda w, p: f"{w.name} tiene {p['a']} {w.item}. {w.name} compra {p['b']} {w.item} más. "
                           f"¿Cuánt{w.g} {w.item} tiene {w.name} ahora?",
        "fr": lambda w, p: f"{w.name} a {p['a']} {w.item}. {w.name} achète encore {p['b']} {w.item}. "
                           f"Combien de {w.item} a {w.name} maintenant ?",
        "zh": lambda w, p: f"{w.name}有{p['a']}{w.item[1]}{w.item[0]}。{w.name}又买了{p['b']}{w.item[1]}"
                           f"{w.item[0]}。{w.name}现在一共有多少{w.item[1]}{w.item[0]}？",
        "ja": lambda w, p: f"{w.name}は{w.item[0]}を{p['a']}{w.item[1]}持っています。さらに{w.item[0]}を"
                           f"{p['b']}{w.item[1]}買いました。{w.name}は今、{w.item[0]}を何{w.item[1]}"
                           f"持っていますか？",
        "ru": lambda w, p: f"У {w.name[1]} есть {ru(p['a'], w.item)}. {w.name[0]} покупает ещё "
                           f"{ru(p['b'], w.item)}. Сколько {w.item[2]} теперь у {w.name[1]}?",
    }),
    "subtract": (_subtract, 1.0, {
        "en": lambda w, p: f"{w.name} has {p['a']} {w.item} and gives {p['b']} of them to a friend. "
                           f"How many {w.item} does {w.name} have left?",
        "de": lambda w, p: f"{w.name} hat {p['a']} {w.item} und schenkt {p['b']} davon einem Freund. "
                           f"Wie viele {w.item} hat {w.name} noch?",
        "es": lambda w, p: f"{w.name} tiene {p['a']} {w.item} y le regala {p['b']} a un amigo. "
                           f"¿Cuánt{w.g} {w.item} le quedan a {w.name}?",
        "fr": lambda w, p: f"{w.name} a {p['a']} {w.item} et en donne {p['b']} à un ami. "
                           f"Combien de {w.item} reste-t-il à {w.name} ?",
        "zh": lambda w, p: f"{w.name}有{p['a']}{w.item[1]}{w.item[0]}，送给朋友{p['b']}{w.item[1]}。"
                           f"{w.name}还剩多少{w.item[1]}{w.item[0]}？",
        "ja": lambda w, p: f"{w.name}は{w.item[0]}を{p['a']}{w.item[1]}持っていて、友だちに{p['b']}"
                           f"{w.item[1]}あげました。{w.item[0]}は何{w.item[1]}残っていますか？",
        "ru": lambda w, p: f"У {w.name[1]} есть {ru(p['a'], w.item)}. {w.name[0]} отдаёт другу "
                           f"{ru(p['b'], w.item)}. Сколько {w.item[2]} останется у {w.name[1]}?",
    }),
    "shopping": (_shopping, 1.0, {
        "en": lambda w, p: f"{w.name} buys {p['a']} {w.item} for ${p['p']} each. "
                           f"How many dollars does {w.name} spend?",
        "de": lambda w, p: f"{w.name} kauft {p['a']} {w.item} zu je {p['p']} Euro. "
                           f"Wie viel Euro gibt {w.name} insgesamt aus?",
        "es": lambda w, p: f"{w.name} compra {p['a']} {w.item} a {p['p']} euros la unidad. "
                           f"¿Cuántos euros gasta {w.name} en total?",
        "fr": lambda w, p: f"{w.name} achète {p['a']} {w.item} à {p['p']} euros pièce. "
                           f"Combien d'euros dépense {w.name} au total ?",
        "zh": lambda w, p: f"{w.name}买了{p['a']}{w.item[1]}{w.item[0]}，每{w.item[1]}{p['p']}元。"
                           f"{w.name}一共花了多少元？",
        "ja": lambda w, p: f"{w.name}は1{w.item[1]}{p['p']}ドルの{w.item[0]}を{p['a']}{w.item[1]}"
                           f"買いました。全部で何ドル払いましたか？",
        "ru": lambda w, p: f"{w.name[0]} покупает {ru(p['a'], w.item)} по {ru(p['p'], RUB)} за штуку. "
                           f"Сколько рублей тратит {w.name[0]}?",
    }),
    "sharing": (_sharing, 1.0, {
        "en": lambda w, p: f"{w.name} has {p['t']} {w.item} and shares them equally among {p['k']} "
                           f"friends. How many {w.item} does each friend get?",
        "de": lambda w, p: f"{w.name} hat {p['t']} {w.item} und verteilt sie gleichmäßig an {p['k']} "
                           f"Freunde. Wie viele {w.item} bekommt jeder Freund?",
        "es": lambda w, p: f"{w.name} tiene {p['t']} {w.item} y l{w.g} reparte a partes iguales "
                           f"entre {p['k']} amigos. ¿Cuánt{w.g} {w.item} recibe cada amigo?",
        "fr": lambda w, p: f"{w.name} a {p['t']} {w.item} et les partage équitablement entre {p['k']} "
                           f"amis. Combien de {w.item} chaque ami reçoit-il ?",
        "zh": lambda w, p: f"{w.name}有{p['t']}{w.item[1]}{w.item[0]}，平均分给{p['k']}个朋友。"
                           f"每个朋友分到多少{w.item[1]}{w.item[0]}？",
        "ja": lambda w, p: f"{w.name}は{w.item[0]}を{p['t']}{w.item[1]}持っていて、{p['k']}人の友だちに"
                           f"同じ数ずつ分けます。1人あたり何{w.item[1]}もらえますか？",
        "ru": lambda w, p: f"У {w.name[1]} есть {ru(p['t'], w.item)}. {w.name[0]} делит их поровну "
                           f"между {p['k']} друзьями. Сколько {w.item[2]} получит каждый друг?",
    }),
    "speed": (_speed, 1.0, {
        "en": lambda w, p: f"A train travels at {p['v']} kilometers per hour. "
                           f"How many kilometers does it travel in {p['t']} hours?",
        "de": lambda w, p: f"Ein Zug fährt {p['v']} Kilometer pro Stunde. "
                           f"Wie viele Kilometer legt er in {p['t']} Stunden zurück?",
        "es": lambda w, p: f"Un tren viaja a {p['v']} kilómetros por hora. "
                           f"¿Cuántos kilómetros recorre en {p['t']} horas?",
        "fr": lambda w, p: f"Un train roule à {p['v']} kilomètres par heure. "
                           f"Combien de kilomètres parcourt-il en {p['t']} heures ?",
        "zh": lambda w, p: f"一列火车每小时行驶{p['v']}千米。它{p['t']}小时一共行驶多少千米？",
        "ja": lambda w, p: f"電車が時速{p['v']}キロメートルで走っています。"
                           f"{p['t']}時間で何キロメートル進みますか？",
        "ru": lambda w, p: f"Поезд едет со скоростью {ru(p['v'], KM)} в час. "
                           f"Сколько километров он проедет за {ru(p['t'], HOURS)}?",
    }),
    "travel_time": (_travel_time, 1.0, {
        "en": lambda w, p: f"{w.name} rides a bike {p['d']} kilometers at {p['v']} kilometers per hour. "
                           f"How many hours does the ride take?",
        "de": lambda w, p: f"{w.name} fährt mit dem Fahrrad {p['d']} Kilometer mit {p['v']} Kilometern "
                           f"pro Stunde. Wie viele Stunden dauert die Fahrt?",
        "es": lambda w, p: f"{w.name} recorre {p['d']} kilómetros en bicicleta a {p['v']} kilómetros por "
                           f"hora. ¿Cuántas horas dura el viaje?",
        "fr": lambda w, p: f"{w.name} parcourt {p['d']} kilomètres à vélo à {p['v']} kilomètres par "
                           f"heure. Combien d'heures dure le trajet ?",
        "zh": lambda w, p: f"{w.name}骑自行车，每小时骑{p['v']}千米，一共要骑{p['d']}千米。需要多少小时？",
        "ja": lambda w, p: f"{w.name}は自転車で時速{p['v']}キロメートルで{p['d']}キロメートル走ります。"
                           f"何時間かかりますか？",
        "ru": lambda w, p: f"{w.name[0]} едет на велосипеде {ru(p['d'], KM)} со скоростью "
                           f"{ru(p['v'], KM)} в час. Сколько часов займёт поездка?",
    }),
    "ages": (_ages, 0.5, {
        "en": lambda w, p: f"{w.name} is {p['a']} years old. {w.other} is {p['d']} years older than "
                           f"{w.name}. How old will {w.other} be in {p['y']} years?",
        "de": lambda w, p: f"{w.name} ist {p['a']} Jahre alt. {w.other} ist {p['d']} Jahre älter als "
                           f"{w.name}. Wie alt ist {w.other} in {p['y']} Jahren?",
        "es": lambda w, p: f"{w.name} tiene {p['a']} años. {w.other} tiene {p['d']} años más que "
                           f"{w.name}. ¿Cuántos años tendrá {w.other} dentro de {p['y']} años?",
        "fr": lambda w, p: f"{w.name} a {p['a']} ans. {w.other} a {p['d']} ans de plus que {w.name}. "
                           f"Quel âge aura {w.other} dans {p['y']} ans ?",
        "zh": lambda w, p: f"{w.name}今年{p['a']}岁。{w.other}比{w.name}大{p['d']}岁。"
                           f"{p['y']}年后{w.other}多少岁？",
        "ja": lambda w, p: f"{w.name}は{p['a']}歳です。{w.other}は{w.name}より{p['d']}歳年上です。"
                           f"{p['y']}年後、{w.other}は何歳になりますか？",
        "ru": lambda w, p: f"{w.name[2]} {ru(p['a'], YEARS)}. {w.other[0]} старше {w.name[1]} на "
                           f"{ru(p['d'], YEARS)}. Сколько лет будет {w.other[2]} через {ru(p['y'], YEARS)}?",
    }),
    "change": (_change, 0.5, {
        "en": lambda w, p: f"{w.name} buys {p['a']} {w.item} for ${p['p']} each and pays with a "
                           f"${p['b']} bill. How many dollars of change does {w.name} get back?",
        "de": lambda w, p: f"{w.name} kauft {p['a']} {w.item} zu je {p['p']} Euro und bezahlt mit "
                           f"einem {p['b']}-Euro-Schein. Wie viel Euro Wechselgeld bekommt {w.name}?",
        "es": lambda w, p: f"{w.name} compra {p['a']} {w.item} a {p['p']} euros la unidad y paga con "
                           f"un billete de {p['b']} euros. ¿Cuántos euros le devuelven a {w.name}?",
        "fr": lambda w, p: f"{w.name} achète {p['a']} {w.item} à {p['p']} euros pièce et paie avec un "
                           f"billet de {p['b']} euros. Combien d'euros rend-on à {w.name} ?",
        "zh": lambda w, p: f"{w.name}买了{p['a']}{w.item[1]}{w.item[0]}，每{w.item[1]}{p['p']}元，"
                           f"付了一张{p['b']}元的纸币。应该找回多少元？",
        "ja": lambda w, p: f"{w.name}は1{w.item[1]}{p['p']}ドルの{w.item[0]}を{p['a']}{w.item[1]}買い、"
                           f"{p['b']}ドル札で払いました。おつりは何ドルですか？",
        "ru": lambda w, p: f"{w.name[0]} покупает {ru(p['a'], w.item)} по {ru(p['p'], RUB)} за штуку "
                           f"и платит купюрой в {ru(p['b'], RUB)}. Сколько рублей сдачи получит {w.name[0]}?",
    }),
    "boxes": (_boxes, 0.5, {
        "en": lambda w, p: f"{w.name} has {p['k']} boxes with {p['m']} {w.item} in each box and "
                           f"{p['e']} more {w.item} outside the boxes. How many {w.item} does "
                           f"{w.name} have in total?",
        "de": lambda w, p: f"{w.name} hat {p['k']} Schachteln, in jeder Schachtel sind {p['m']} "
                           f"{w.item}. Dazu hat {w.name} noch {p['e']} einzelne {w.item}. "
                           f"Wie viele {w.item} hat {w.name} insgesamt?",
        "es": lambda w, p: f"{w.name} tiene {p['k']} cajas con {p['m']} {w.item} en cada caja y "
                           f"{p['e']} {w.item} suelt{w.g}. ¿Cuánt{w.g} {w.item} tiene {w.name} en total?",
        "fr": lambda w, p: f"{w.name} a {p['k']} boîtes contenant chacune {p['m']} {w.item}, plus "
                           f"{p['e']} autres {w.item}. Combien de {w.item} a {w.name} en tout ?",
        "zh": lambda w, p: f"{w.name}有{p['k']}个盒子，每个盒子里有{p['m']}{w.item[1]}{w.item[0]}，"
                           f"另外还有{p['e']}{w.item[1]}{w.item[0]}。{w.name}一共有多少{w.item[1]}"
                           f"{w.item[0]}？",
        "ja": lambda w, p: f"{w.name}は{w.item[0]}が{p['m']}{w.item[1]}ずつ入った箱を{p['k']}箱と、"
                           f"ばらの{w.item[0]}を{p['e']}{w.item[1]}持っています。{w.item[0]}は全部で"
                           f"何{w.item[1]}ありますか？",
        "ru": lambda w, p: f"У {w.name[1]} есть {ru(p['k'], BOXES)}, в каждой по {ru(p['m'], w.item)}, "
                           f"и ещё {ru(p['e'], w.item)} отдельно. Сколько всего {w.item[2]} у {w.name[1]}?",
    }),
}


# The easy level: one operation on small numbers, with the same texts.
EASY_DRAWS: dict[str, Callable[[random.Random], tuple[dict, int]]] = {
    "add": lambda r: _add(r, top=9),
    "subtract": lambda r: _subtract(r, top=15),
    "shopping": lambda r: _shopping(r, top=5),
}


def generate_problems(n: int, languages: Sequence[str], seed: int = 0, easy: bool = False
                      ) -> list[dict]:
    """`n` problems in each of `languages`: rows {qid, lang, question, gold}, sorted by
    (qid, lang). Problem i depends only on (seed, i, easy), never on the languages asked
    for; easy qids read easy<seed>-<i>, the others gen<seed>-<i>."""
    langs = resolve_languages(languages, LANGUAGES)
    unsupported = [code for code in langs if code not in LANGUAGES]
    if unsupported:
        raise ValueError(f"generated problems exist in {', '.join(LANGUAGES)}; "
                         f"not in {', '.join(unsupported)}")
    names = list(EASY_DRAWS if easy else TEMPLATES)
    weights = [1.0 if easy else TEMPLATES[t][1] for t in names]
    width = max(4, len(str(n - 1)))
    rows = []
    for i in range(n):
        r = random.Random(f"bestofl-problems/{seed}/{i}")
        kind = r.choices(names, weights)[0]
        numbers, answer = (EASY_DRAWS[kind] if easy else TEMPLATES[kind][0])(r)
        name, other = r.sample(range(len(NAMES["en"])), 2)
        item = r.randrange(len(ITEMS["en"]))
        qid = f"{'easy' if easy else 'gen'}{seed}-{i:0{width}d}"
        for lang in sorted(langs):
            text = TEMPLATES[kind][2][lang](_words(lang, name, other, item), numbers)
            rows.append({"qid": qid, "lang": lang, "question": text, "gold": str(answer)})
    return rows
