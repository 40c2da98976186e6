"""Answer-safety guards: reasons why two questions that embed close together must still
not share an answer. Embedding similarity is blind to these ("enable 2FA" and "disable
2FA" are near neighbours), so they are checked on the text of the two questions.

The guards judge what *differs* between the two questions, never each question alone:
two questions that share an answer often differ in many words, two that do not often
differ in very few. Both are cut into words (contractions opened: "isn't" is "is not";
number words made digits; "turn on" one word), and each guard asks one thing of the
difference:

- negation: a polarity flip. Two words of one action class with opposite signs, one on
  each side ("turn on" / "deactivate"; "add" / "remove"); two opposed positions aligned
  in the same place ("before" / "after"); or a negation on one side only that is all
  that differs ("I want to cancel" / "I do not want to cancel").
- number: a number or unit that one question has and the other does not.
- entity: a name, quoted string, identifier, file or URL one question has and the other
  does not mention.
- direction: the same words in swapped roles ("from Paris to Rome" / "from Rome to
  Paris", "100 EUR in USD" / "100 USD in EUR").

A difference only counts when it is *what differs*: the rest of the two questions, its
content words, must be nearly the same. A negation, number or name inside a long
different wording ("I can't find the code anywhere" / "where is my code") is how people
phrase a question, not a change of what they ask, and does not fire; one that both
questions share is no difference at all. A change on both sides (2 vs 3, on vs off,
Paris vs Rome) is stronger evidence than a word on one side only, so it is allowed more
of a different wording around it.

Each guard is a pure function `(query, stored) -> (query's words, stored's words)` of
the words it fired on, or None. Guards apply to semantic candidates only, never to exact
hits. A rejected candidate becomes a miss with reason `guard:<name>`, and the words say
why.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from difflib import SequenceMatcher
from functools import lru_cache
from typing import NamedTuple

# -- words -------------------------------------------------------------------------------

_TOKEN = re.compile(r"\d+(?:[.,:/]\d+)*|[a-z]+(?:'[a-z]+)?|[%$€£¥]")

# "isn't" is "is not": the negation becomes a word of its own, aligned like any other.
_NOT_FORMS = {"can't": "can", "cannot": "can", "won't": "will", "shan't": "shall", "ain't": "is", "cant": "can",
              "wont": "will", "aint": "is"}
_BARE_NEGATED = frozenset({"dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "havent", "hasnt",
                           "hadnt", "couldnt", "shouldnt", "wouldnt", "mustnt", "neednt"})
_CLITICS = {"'re": "are", "'ll": "will", "'ve": "have", "'m": "am", "'d": "would"}
_IS_AFTER = frozenset({"what", "where", "how", "who", "when", "why", "it", "that", "there", "here", "he", "she"})

NUMBER_WORDS = {
    "zero": "0", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
    "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000", "dozen": "12",
    "half": "0.5", "quarter": "0.25", "twice": "2", "double": "2", "triple": "3",
}

# Verbs whose particle makes another verb: "turn on" and "turn off" are opposites, the
# "on" of "on Windows" is not. Joined into one word ("turn_on") before anything else.
_PARTICLE_VERBS = frozenset({
    "turn", "turns", "turned", "turning", "switch", "switches", "switched", "switching", "power", "powered",
    "shut", "log", "logs", "logged", "logging", "sign", "signs", "signed", "signing", "check", "checked",
    "checking", "opt", "opted", "opting", "plug", "plugged", "clock", "clocked",
})
_PARTICLES = frozenset({"on", "off", "in", "out", "up", "down"})


def _base_verb(word: str) -> str:
    for ending, replacement in (("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(ending) and len(word) - len(ending) >= 3:
            stem = word[:-len(ending)] + replacement
            return stem[:-1] if len(stem) > 3 and stem[-1] == stem[-2] else stem  # "logged" -> "log"
    return word


Words = tuple[str, ...]


@lru_cache(maxsize=4096)  # a stored question meets many new ones, and every guard reads it
def words(text: str) -> Words:
    """The question's words, lower case, contractions opened, number words as digits,
    particle verbs joined."""
    out: list[str] = []
    for token in _TOKEN.findall(text.lower().replace("’", "'")):
        if token in _NOT_FORMS:
            out += [_NOT_FORMS[token], "not"]
        elif token.endswith("n't"):
            out += [token[:-3], "not"]
        elif token in _BARE_NEGATED:
            out += [token[:-2], "not"]
        elif "'" in token:
            stem, clitic = token.split("'", 1)
            out.append(stem)
            if f"'{clitic}" in _CLITICS:
                out.append(_CLITICS[f"'{clitic}"])
            elif clitic == "s" and stem in _IS_AFTER:
                out.append("is")
        else:
            out.append(NUMBER_WORDS.get(token, token))
    joined: list[str] = []
    for token in out:
        if token in _PARTICLES and joined and joined[-1] in _PARTICLE_VERBS:
            joined[-1] = f"{_base_verb(joined[-1])}_{token}"
        else:
            joined.append(token)
    return tuple(joined)


def _shown(tokens: Iterable[str]) -> str:
    return " ".join(t.replace("_", " ") for t in tokens)


# Words that carry no content of their own: what is left when they are dropped is what a
# question asks about. Wh-words and pronouns stay: "where" vs "how" is a difference.
LIGHT = frozenset({
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "can", "could",
    "will", "would", "shall", "should", "may", "might", "must", "have", "has", "had", "please", "to", "of", "for",
    "with", "by", "in", "on", "at", "about", "and", "or", "so", "just", "really", "any", "some", "that", "this",
    "there", "it", "its", "me", "my", "i", "you", "your", "we", "our", "us",
})


class _Pair:
    """The two questions' words."""

    __slots__ = ("a", "b")

    def __init__(self, query: str, stored: str) -> None:
        self.a, self.b = words(query), words(stored)

    def rest_differs(self, drop_a: Iterable[str], drop_b: Iterable[str], paired: bool) -> bool:
        """Whether the content words left when the guard's own words are dropped differ by
        more than a rewording allows: one word, or one in eight, for a difference on one
        side only; two words, or one in three, for a change on both sides."""
        skip_a, skip_b = set(drop_a) | LIGHT, set(drop_b) | LIGHT
        left = Counter(t for t in self.a if t not in skip_a)
        right = Counter(t for t in self.b if t not in skip_b)
        size = max(sum(left.values()), sum(right.values()))
        allowed = 2 + size // 3 if paired else 1 + size // 8
        return sum(((left - right) + (right - left)).values()) > allowed


Fired = tuple[str, str] | None  # (the query's words, the stored question's words)


# -- negation and polarity ---------------------------------------------------------------

NEGATORS = frozenset({"not", "no", "never", "without", "none", "nobody", "nothing", "neither", "nor", "unable"})
# "I don't know how to ...", "no idea why ...": a negated state of mind, not of the request.
EPISTEMIC = frozenset({"know", "sure", "idea", "understand", "remember", "clue", "certain", "think"})
_HEDGES = frozenset({"really", "quite", "even", "have", "any", "a", "the", "got"})


def _forms(*verbs: str) -> set[str]:
    """A verb and its -s, -ed and -ing forms ("enable": enables, enabled, enabling)."""
    found: set[str] = set()
    for verb in verbs:
        if "_" in verb or " " in verb:
            found.add(verb.replace(" ", "_"))
            continue
        stem = verb[:-1] if verb.endswith("e") else verb
        found |= {verb, f"{verb}s", f"{verb}es", f"{stem}ed", f"{stem}ing"}
        if stem == verb:  # "stop": stopped, stopping
            found |= {f"{verb}{verb[-1]}ed", f"{verb}{verb[-1]}ing"}
    return found


# Action classes: every word of a class's first set asks for the opposite of every word
# of its second. A flip is one side's diff holding one sign and the other side's the
# other sign (and neither both).
ACTIONS: tuple[tuple[str, set[str], set[str]], ...] = (
    ("switch", _forms("enable", "activate", "turn_on", "switch_on", "power_on", "unmute", "unhide"),
     _forms("disable", "deactivate", "turn_off", "switch_off", "power_off", "shut_off", "shut_down", "mute", "hide")),
    ("keep", _forms("add", "insert", "create", "include"), _forms("remove", "delete", "erase", "exclude")),
    ("session", _forms("log_in", "sign_in", "login", "signin", "check_in", "opt_in", "plug_in", "clock_in"),
     _forms("log_out", "sign_out", "logout", "signout", "check_out", "opt_out", "unplug", "clock_out")),
    ("lock", _forms("lock", "block", "freeze", "suspend", "pause"),
     _forms("unlock", "unblock", "unfreeze", "unsuspend", "resume", "unpause")),
    ("install", _forms("install", "subscribe", "connect", "follow", "join"),
     _forms("uninstall", "unsubscribe", "disconnect", "unfollow", "leave") | {"left"}),
    ("cipher", _forms("encrypt", "encode", "compress", "zip", "serialize", "mount"),
     _forms("decrypt", "decode", "decompress", "unzip", "deserialize", "unmount")),
    ("transfer", _forms("upload", "import", "send", "deposit", "lend", "push"),
     _forms("download", "export", "receive", "withdraw", "borrow", "pull")),
    ("trade", _forms("buy", "purchase"), _forms("sell")),
    ("open", _forms("open", "start", "begin", "launch"), _forms("close", "stop", "quit", "exit", "shut")),
    ("verdict", _forms("accept", "approve", "allow", "permit"), _forms("reject", "decline", "deny", "forbid")),
    ("win", _forms("win") | {"won"}, _forms("lose") | {"lost"}),
    ("amount", _forms("increase", "raise", "turn_up", "maximize", "expand", "grow"),
     _forms("decrease", "reduce", "lower", "turn_down", "minimize", "shrink")),
    ("arrive", _forms("arrive") | {"arrival", "arrivals", "inbound", "incoming"},
     _forms("depart") | {"departure", "departures", "outbound", "outgoing"}),
)
_SIGN: dict[str, list[tuple[str, int]]] = {}
for _name, _plus, _minus in ACTIONS:
    for _word in _plus:
        _SIGN.setdefault(_word, []).append((_name, 1))
    for _word in _minus:
        _SIGN.setdefault(_word, []).append((_name, -1))

# Opposed positions and qualities: common words in other senses too ("like", "last",
# "right"), so they count only when aligned in the same place of the two questions.
POSITIONS = (
    ("before", "after"), ("above", "below"), ("over", "under"), ("inside", "outside"), ("more", "less"),
    ("more", "fewer"), ("most", "least"), ("higher", "lower"), ("first", "last"), ("up", "down"),
    ("minimum", "maximum"), ("min", "max"), ("best", "worst"), ("hot", "cold"), ("cheap", "expensive"),
    ("cheapest", "expensive"), ("fast", "slow"), ("fastest", "slowest"), ("love", "hate"), ("like", "dislike"),
    ("yesterday", "tomorrow"), ("ascending", "descending"), ("true", "false"), ("plus", "minus"), ("on", "off"),
    ("early", "late"), ("earliest", "latest"), ("oldest", "newest"), ("old", "new"), ("big", "small"),
    ("biggest", "smallest"), ("largest", "smallest"), ("long", "short"), ("longest", "shortest"), ("high", "low"),
    ("highest", "lowest"), ("positive", "negative"), ("legal", "illegal"), ("safe", "unsafe"), ("with", "without"),
    ("possible", "impossible"), ("always", "never"), ("everyone", "nobody"), ("everything", "nothing"),
)
_OPPOSED = {frozenset(pair) for pair in POSITIONS}

# A bare "on"/"off" is the switch's state when nothing it could govern follows it ("turn
# the lights on", "switch wifi off on my laptop": another preposition, a conjunction or an
# adverb); "on Windows" is a place.
_STATE_FOLLOWERS = frozenset({
    "when", "while", "and", "or", "at", "for", "during", "after", "before", "until", "by", "again", "automatically",
    "permanently", "please", "now", "in", "if", "so", "on", "off", "from", "with", "to", "across", "everywhere",
    "completely", "forever", "manually", "remotely", "then", "too", "also", "but",
})


def _signs_at(tokens: Words, i: int) -> list[tuple[str, int]]:
    """The (action class, sign) pairs of the word at i."""
    token = tokens[i]
    if token in ("on", "off"):
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        return [("switch", 1 if token == "on" else -1)] if following is None or following in _STATE_FOLLOWERS else []
    return _SIGN.get(token, [])


def _negations(tokens: Words) -> list[int]:
    """Positions of the negations that negate something asked: not "I don't know how",
    "... or not", "I can't ..." / "I am unable to ...", nor a "no" that answers rather than
    asks ("no, that is ...", "... so no")."""
    found = []
    for i, token in enumerate(tokens):
        if token in NEGATORS:
            following = next((t for t in tokens[i + 1:i + 4] if t not in _HEDGES), None)
            if following in EPISTEMIC or (i and tokens[i - 1] == "or"):
                continue
            if token == "no" and (following is None or i == 0 and following in LIGHT):
                continue
            if tokens[i - 2:i] in (("i", "can"), ("i", "could"), ("i", "am")):  # "I can't find it": a
                continue  # complaint of what the other question asks how to do, not its opposite
            found.append(i)
    return found


def _inserted(a: Words, b: Words, neg_a: list[int], neg_b: list[int]) -> bool:
    """Whether a negation was put into a clause both questions share: the stretch of
    words where the two differ around it holds nothing else but light words ("do not",
    "is not"), not a clause of its own ("I have no checks and ...")."""
    negators = set(neg_a) | {len(a) + j for j in neg_b}
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        here = [i for i in range(i1, i2) if i in negators] + [len(a) + j for j in range(j1, j2) if len(a) + j in negators]
        if not here:
            continue
        others = [t for i, t in zip(range(i1, i2), a[i1:i2], strict=True) if i not in negators]
        others += [t for j, t in zip(range(j1, j2), b[j1:j2], strict=True) if len(a) + j not in negators]
        if all(t in LIGHT for t in others):
            return True
    return False


def polarity_differs(query: str, stored: str) -> Fired:
    """One question asks for the opposite of the other: opposite actions, opposed
    positions in the same place, or a negation that is all that differs."""
    pair = _Pair(query, stored)
    a, b = pair.a, pair.b
    flips = _flip(pair) if _may_flip(set(a) - set(b), set(b) - set(a)) else None
    if flips is not None:
        return flips
    neg_a, neg_b = _negations(a), _negations(b)
    if len(neg_a) % 2 == len(neg_b) % 2:
        return None
    # The negation must be all that differs: dropped, the two questions say the same.
    if pair.rest_differs({a[i] for i in neg_a}, {b[i] for i in neg_b}, paired=False) or not _inserted(a, b, neg_a, neg_b):
        return None
    return _context(a, neg_a), _context(b, neg_b)


# Each word's poles, (class or opposed pair, sign): a flip needs one word on each side
# with the same pole of opposite signs, which most pairs do not have, and are done at once.
_POLES: dict[str, set[tuple[str, int]]] = {word: set(signs) for word, signs in _SIGN.items()}
for _pair in POSITIONS:
    for _sign, _word in zip((1, -1), _pair, strict=True):
        _POLES.setdefault(_word, set()).add((" ".join(_pair), _sign))
_POLES["on"].add(("switch", 1))
_POLES["off"].add(("switch", -1))


def _may_flip(only_a: set[str], only_b: set[str]) -> bool:
    poles_b = {(name, -sign) for word in only_b & _POLES.keys() for name, sign in _POLES[word]}
    return bool(poles_b) and any(pole in poles_b for word in only_a & _POLES.keys() for pole in _POLES[word])


def _context(tokens: Words, at: list[int]) -> str:
    """A negation with the word it negates ("not want"), or "" when there is none."""
    shown = []
    for i in at:
        following = next((t for t in tokens[i + 1:] if t not in LIGHT), "")
        shown.append(f"{tokens[i]} {following}".strip())
    return _shown(shown)


def _flip(pair: _Pair) -> Fired:
    a, b = pair.a, pair.b
    diff_a: list[tuple[int, int]] = []
    diff_b: list[tuple[int, int]] = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        diff_a.append((i1, i2))
        diff_b.append((j1, j2))
        if tag == "replace" and not (i1 and a[i1 - 1] == "how"):  # opposed positions, aligned; "how high" and
            for x in a[i1:i2]:                                         # "how low" ask for one measure
                for y in b[j1:j2]:
                    if frozenset((x, y)) in _OPPOSED and x != y:
                        return x, y
    signs_a = _signed(a, diff_a)
    signs_b = _signed(b, diff_b)
    for name in sorted(signs_a.keys() & signs_b.keys()):
        sa, sb = {sign for sign, _ in signs_a[name]}, {sign for sign, _ in signs_b[name]}
        if len(sa) == 1 and len(sb) == 1 and sa != sb:
            words_a, words_b = [t for _, t in signs_a[name]], [t for _, t in signs_b[name]]
            if not pair.rest_differs(words_a, words_b, paired=True):
                return _shown(words_a), _shown(words_b)
    return None


def _signed(tokens: Words, spans: list[tuple[int, int]]) -> dict[str, list[tuple[int, str]]]:
    """Each action class met in the spans, with the signs and words it was met as."""
    found: dict[str, list[tuple[int, str]]] = {}
    for start, end in spans:
        for i in range(start, end):
            for name, sign in _signs_at(tokens, i):
                found.setdefault(name, []).append((sign, tokens[i]))
    return found


# -- numbers, dates, times, versions, units, currencies ----------------------------------

_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*")
# Units and currencies, each spelling to one name: "$5" and "5 dollars" are one amount.
_UNIT_NAMES = {
    "%": "%", "percent": "%", "$": "usd", "usd": "usd", "dollar": "usd", "dollars": "usd", "bucks": "usd",
    "€": "eur", "eur": "eur", "euro": "eur", "euros": "eur", "£": "gbp", "gbp": "gbp", "sterling": "gbp",
    "¥": "jpy", "jpy": "jpy", "yen": "jpy", "cad": "cad", "aud": "aud", "chf": "chf", "inr": "inr", "rupees": "inr",
    "pesos": "mxn", "mxn": "mxn", "yuan": "cny", "cny": "cny", "rmb": "cny", "btc": "btc", "bitcoin": "btc",
    "km": "km", "kilometer": "km", "kilometers": "km", "kilometre": "km", "kilometres": "km", "mile": "mile",
    "miles": "mile", "kg": "kg", "kilogram": "kg", "kilograms": "kg", "kilos": "kg", "lb": "lb", "lbs": "lb",
    "pound": "lb", "pounds": "lb", "g": "g", "gram": "g", "grams": "g", "oz": "oz", "ounce": "oz", "ounces": "oz",
    "m": "m", "meter": "m", "meters": "m", "metre": "m", "metres": "m", "cm": "cm", "centimeters": "cm",
    "mm": "mm", "ft": "ft", "foot": "ft", "feet": "ft", "inch": "inch", "inches": "inch", "celsius": "c",
    "fahrenheit": "f", "kb": "kb", "mb": "mb", "gb": "gb", "tb": "tb", "ms": "ms", "second": "s", "seconds": "s",
    "minute": "min", "minutes": "min", "mins": "min", "hour": "h", "hours": "h", "hrs": "h", "day": "day",
    "days": "day", "week": "week", "weeks": "week", "month": "month", "months": "month", "year": "year",
    "years": "year", "mph": "mph", "kmh": "kmh", "l": "l", "liter": "l", "liters": "l", "litre": "l", "litres": "l",
    "ml": "ml", "milliliters": "ml", "gallon": "gal", "gallons": "gal", "cup": "cup", "cups": "cup",
}
_AFTER_NUMBER_ONLY = {"am": "am", "pm": "pm", "c": "c", "f": "f", "k": "1000"}  # words too, when not after a number


@lru_cache(maxsize=4096)
def _quantities(tokens: Words) -> tuple[Counter[str], Counter[str]]:
    numbers: Counter[str] = Counter()
    units: Counter[str] = Counter()
    for i, token in enumerate(tokens):
        if _NUMBER.fullmatch(token):
            numbers[token.replace(",", "")] += 1
        elif token in _UNIT_NAMES:
            units[_UNIT_NAMES[token]] += 1
        elif token in _AFTER_NUMBER_ONLY and i and _NUMBER.fullmatch(tokens[i - 1]):
            units[_AFTER_NUMBER_ONLY[token]] += 1
    return numbers, units


def numbers_differ(query: str, stored: str) -> Fired:
    """A number one question has and the other does not ("top 3" vs "top 10", "15% of
    80" vs "15% of 60", dates, times, versions), or the same numbers in another unit or
    currency; not one that sits in a different wording ("I paid 20 and it failed" vs
    "why did my payment fail")."""
    pair = _Pair(query, stored)
    if not any(t[0].isdigit() for t in pair.a + pair.b):  # most questions have no number
        return None
    na, ua = _quantities(pair.a)
    nb, ub = _quantities(pair.b)
    only_a, only_b = list((na - nb).elements()), list((nb - na).elements())
    if not only_a and not only_b:  # the same numbers: in the same units?
        if not na:
            return None
        only_a = [t for t in pair.a if _UNIT_NAMES.get(t, "") in ua - ub]
        only_b = [t for t in pair.b if _UNIT_NAMES.get(t, "") in ub - ua]
        if not only_a or not only_b:  # a unit said on one side only says the same amount
            return None
    drop_a = set(only_a) | {t for t in pair.a if _UNIT_NAMES.get(t) in ua or t in _AFTER_NUMBER_ONLY}
    drop_b = set(only_b) | {t for t in pair.b if _UNIT_NAMES.get(t) in ub or t in _AFTER_NUMBER_ONLY}
    if pair.rest_differs(drop_a, drop_b, paired=bool(only_a and only_b)):
        return None
    return _shown(only_a), _shown(only_b)


# -- named entities, quoted strings, identifiers, file names, URLs -----------------------

_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|`([^`]+)`|'([^']{2,})'(?![a-z])")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b")
_FILE = re.compile(r"\b[\w-]+\.(?:[a-z0-9]{1,5})\b", re.IGNORECASE)
_IDENT = re.compile(r"\b(?:[a-z]+_[a-z0-9_]+|[a-z]+[A-Z][A-Za-z0-9]*|[A-Za-z_]\w*\(\)|\w+(?:\.\w+){1,}\w*)\b")
_CAPITALISED = re.compile(r"\b[A-Z][a-zA-Z0-9]+\b")


@lru_cache(maxsize=4096)
def _entities(text: str) -> frozenset[str]:
    found: set[str] = set()
    for match in _QUOTED.finditer(text):
        found.add(next(g for g in match.groups() if g).strip().lower())
    for pattern in (_URL, _EMAIL, _FILE, _IDENT):
        found |= {m.group(0).lower().rstrip(".,;:!?") for m in pattern.finditer(text)}
    text = text.strip()
    for match in _CAPITALISED.finditer(text):  # a capital not explained by a sentence start
        before = text[:match.start()].rstrip()
        if match.group(0) != "I" and before and before[-1] not in ".!?":
            found.add(match.group(0).lower())
    return frozenset(found)


def entities_differ(query: str, stored: str) -> Fired:
    """A name, quoted string, code identifier, file name or URL that one question has and
    the other does not even mention in lower case ("Paris" vs "London"; but "Password"
    vs "password" is the same word), unless it sits in a different wording."""
    ea, eb = _entities(query), _entities(stored)
    if not ea and not eb:
        return None
    pair = _Pair(query, stored)
    la, lb = f" {' '.join(pair.a)} ", f" {' '.join(pair.b)} "
    only_a = sorted(e for e in ea - eb if f" {' '.join(words(e))} " not in lb)
    only_b = sorted(e for e in eb - ea if f" {' '.join(words(e))} " not in la)
    if not only_a and not only_b:
        return None
    drop_a = {w for e in only_a for w in words(e)}
    drop_b = {w for e in only_b for w in words(e)}
    if pair.rest_differs(drop_a, drop_b, paired=bool(only_a and only_b)):
        return None
    return ", ".join(only_a), ", ".join(only_b)


# -- direction and role -------------------------------------------------------------------

RELATIONS = frozenset({"from", "to", "into", "than", "vs", "versus", "onto", "towards", "toward", "in", "per", "against"})
_NOT_GOVERNED = LIGHT | RELATIONS | frozenset({"what", "which", "who", "how", "when", "where", "why", "much", "many",
                                               "get", "go", "not"})
# "to" is mostly "want to ...": a relation only in a question of moving or converting;
# "in" mostly a place: a relation only after an amount ("100 EUR in USD", "5 feet in inches").
CONVERSIONS = frozenset({"from", "convert", "converting", "conversion", "translate", "translation", "exchange",
                         "transfer", "move", "switch", "flight", "flights", "fly", "train", "bus", "drive", "send"})


def _relations(tokens: Words, moving: bool) -> list[int]:
    """Positions of the words that give the next one a role."""
    found = []
    for i, token in enumerate(tokens):
        if token not in RELATIONS or (token == "to" and not moving):
            continue
        if token in ("in", "into") and not (i and tokens[i - 1] in _UNIT_NAMES
                                             or i > 1 and _NUMBER.fullmatch(tokens[i - 2])):
            continue
        found.append(i)
    return found


def _governed(tokens: Words, at: list[int]) -> dict[str, set[str]]:
    """Each relation word and the first content word after each of its uses."""
    roles: dict[str, set[str]] = {}
    for i in at:
        following = next((t for t in tokens[i + 1:] if t not in _NOT_GOVERNED), None)
        if following is not None:
            roles.setdefault(tokens[i], set()).add(following)
    return roles


def _apart(tokens: Words, at: list[int], x: str, y: str) -> int:
    """+1 when x comes first with a relation word between them, -1 when y does, else 0."""
    i, j = tokens.index(x), tokens.index(y)
    if not any(min(i, j) < r < max(i, j) for r in at):
        return 0
    return 1 if i < j else -1


def direction_differs(query: str, stored: str) -> Fired:
    """The same words in swapped roles: "flights from Paris to Rome" vs "from Rome to
    Paris", "is A bigger than B" vs "is B bigger than A", "100 EUR in USD" vs "100 USD
    in EUR": each question has a relation word between the two, in the other order, and
    the relation takes another of them. A different order with the same roles ("to Rome
    from Paris") is fine, and so is "change to British male" / "to the male British one"."""
    a, b = words(query), words(stored)
    if not RELATIONS.intersection(a) or not RELATIONS.intersection(b):
        return None
    moving = not CONVERSIONS.isdisjoint(a) or not CONVERSIONS.isdisjoint(b)
    at_a, at_b = _relations(a, moving), _relations(b, moving)
    ra, rb = _governed(a, at_a), _governed(b, at_b)
    shared = set(a) & set(b)
    for relation in sorted(ra.keys() & rb.keys()):
        for x in sorted((ra[relation] - rb[relation]) & shared):
            for y in sorted((rb[relation] - ra[relation]) & shared):
                order_a, order_b = _apart(a, at_a, x, y), _apart(b, at_b, x, y)
                if order_a and order_b and order_a != order_b:
                    return f"{relation} {x}", f"{relation} {y}"
    return None


GUARDS: dict[str, Callable[[str, str], Fired]] = {
    "negation": polarity_differs,
    "number": numbers_differ,
    "entity": entities_differ,
    "direction": direction_differs,
}


class Finding(NamedTuple):
    """A guard that fired, and on which words of each question."""

    guard: str
    query_words: str
    stored_words: str

    @property
    def words(self) -> str:
        """What a user reads: `"turn off" vs "turn on"` (the new question's first)."""
        def side(text: str) -> str:
            return f'"{text}"' if text else "nothing"
        return f"{side(self.query_words)} vs {side(self.stored_words)}"


def parse(text: str) -> tuple[str, ...]:
    """`all`, `none`, or a comma-separated list of guard names."""
    value = text.strip().lower()
    if value == "all":
        return tuple(GUARDS)
    if value in ("none", ""):
        return ()
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [n for n in names if n not in GUARDS]
    if unknown:
        raise ValueError(f"unknown guard {unknown[0]!r} (use all, none or {', '.join(GUARDS)})")
    return names


def check(query: str, stored: str, enabled: tuple[str, ...]) -> Finding | None:
    """The first enabled guard that fires, with its words, or None."""
    for name in enabled:
        fired = GUARDS[name](query, stored)
        if fired is not None:
            return Finding(name, *fired)
    return None
