"""Answer extraction on real multilingual reasoning traces: ours vs "last \\boxed{} number".

For every model/method/language file under --data (xling-traces layout), grades each
response with bestofl.answers.grade and with the usual baseline (take the last \\boxed{...},
drop commas, read the first ASCII number), then prints per-language accuracy of both, how
many responses we read no answer from, and finally `answer_extraction_gain: <ours - baseline>`.

    python benchmarks/answer_extraction.py [--data DIR] [--show-missing N] [--show-disagree N]
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing

from bestofl.answers import grade, model_response  # noqa: E402

_BOX = re.compile(r"\\boxed\s*\{")
_ASCII_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def baseline_answer(response: str) -> float | None:
    """The common grader: last \\boxed{...} (braces matched), commas dropped, first number."""
    starts = [m.end() for m in _BOX.finditer(response)]
    if not starts:
        return None
    start, depth = starts[-1], 1
    for i in range(start, len(response)):
        depth += {"{": 1, "}": -1}.get(response[i], 0)
        if depth == 0:
            m = _ASCII_NUMBER.search(response[start:i].replace(",", ""))
            return float(m.group()) if m else None
    return None


def baseline_correct(response: str, gold: float) -> bool:
    answer = baseline_answer(response)
    return answer is not None and abs(answer - gold) <= 1e-6 * max(1.0, abs(gold))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/xling-traces")
    parser.add_argument("--show-missing", type=int, default=0, metavar="N",
                        help="print N random responses from which no answer was read")
    parser.add_argument("--show-disagree", type=int, default=0, metavar="N",
                        help="print N random responses that only one grader gets right")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    files = sorted(args.data.glob("*/*/*.jsonl.gz"))
    if not files:
        sys.exit(f"no <model>/<method>/<lang>.jsonl.gz files under {args.data}")
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # n, ours, base, none
    missing, disagree = [], []
    for path in files:
        lang = path.name.removesuffix(".jsonl.gz")
        where = f"{path.parent.parent.name}/{path.parent.name}/{lang}"
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f):
                row = json.loads(line)
                response = model_response(row["output"])
                answer, ours = grade(response, row["gold_answer"], lang)
                base = baseline_correct(response, float(row["gold_answer"]))
                s = stats[lang]
                s[0] += 1
                s[1] += bool(ours)
                s[2] += base
                s[3] += answer is None
                case = (where, line_no, row["gold_answer"], answer, response)
                if answer is None:
                    missing.append(case)
                if bool(ours) != base:
                    disagree.append(case)

    rng = random.Random(args.seed)
    for title, cases, k in (("NO ANSWER", missing, args.show_missing),
                            ("DISAGREE", disagree, args.show_disagree)):
        for where, line_no, gold, answer, response in rng.sample(cases, min(k, len(cases))):
            print(f"=== {title} {where} line {line_no}: gold {gold}, ours {answer}, "
                  f"baseline {baseline_answer(response)}, {len(response)} chars")
            print("..." + response[-600:].replace("\n", "\n    ") + "\n")

    print(f"{len(files)} files under {args.data}\n")
    print(f"{'lang':<6}{'n':>7}{'ours':>9}{'baseline':>10}{'gain':>9}{'no answer':>11}")
    total = [0, 0, 0, 0]
    for lang in sorted(stats):
        n, ours, base, none = stats[lang]
        total = [a + b for a, b in zip(total, stats[lang])]
        print(f"{lang:<6}{n:>7}{ours / n:>9.4f}{base / n:>10.4f}{(ours - base) / n:>+9.4f}"
              f"{none:>11}")
    n, ours, base, none = total
    print(f"{'all':<6}{n:>7}{ours / n:>9.4f}{base / n:>10.4f}{(ours - base) / n:>+9.4f}{none:>11}")
    print(f"answer_extraction_gain: {(ours - base) / n:.4f}")


if __name__ == "__main__":
    main()
