"""Answer-safety guards: reasons why two questions that embed close together must still
not share an answer. Embedding similarity is blind to these ("enable 2FA" and "disable
2FA" are near neighbours), so they are checked on the text of the two questions.

Each guard is a small pure function `(query, stored_query) -> bool` (True: they differ
in a way that changes the answer). Guards apply to semantic candidates only, never to
exact hits. A rejected candidate becomes a miss with reason `guard:<name>`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

# -- negation and polarity ---------------------------------------------------------------

NEGATORS = frozenset({"not", "no", "never", "without", "none", "nobody", "nothing", "neither", "nor", "cannot"})

# Pairs whose members ask for opposite things. A guard fires when one question has one
# member and the other question has the other (and not both).
OPPOSITES = (
    ("enable", "disable"), ("enabled", "disabled"), ("on", "off"), ("add", "remove"), ("before", "after"),
    ("increase", "decrease"), ("up", "down"), ("open", "close"), ("start", "stop"), ("allow", "deny"),
    ("allow", "block"), ("include", "exclude"), ("import", "export"), ("upload", "download"), ("min", "max"),
    ("minimum", "maximum"), ("buy", "sell"), ("lock", "unlock"), ("show", "hide"), ("connect", "disconnect"),
    ("install", "uninstall"), ("encrypt", "decrypt"), ("subscribe", "unsubscribe"), ("activate", "deactivate"),
    ("accept", "reject"), ("true", "false"), ("more", "less"), ("higher", "lower"), ("first", "last"),
    ("left", "right"), ("push", "pull"), ("send", "receive"), ("win", "lose"), ("mute", "unmute"),
    ("follow", "unfollow"), ("block", "unblock"), ("pause", "resume"), ("join", "leave"),
    ("create", "delete"), ("hot", "cold"), ("cheap", "expensive"), ("fast", "slow"), ("best", "worst"),
    ("love", "hate"), ("like", "dislike"), ("arrive", "depart"), ("arrival", "departure"), ("inbound", "outbound"),
    ("import", "export"), ("credit", "debit"), ("deposit", "withdraw"), ("zip", "unzip"), ("plus", "minus"),
    ("above", "below"), ("over", "under"), ("inside", "outside"), ("ascending", "descending"),
    ("compress", "decompress"), ("encode", "decode"), ("serialize", "deserialize"), ("sign in", "sign out"),
    ("log in", "log out"), ("login", "logout"), ("yesterday", "tomorrow"),
)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("’", "'"))


# "I don't know how to ...", "no idea why ...": a negated state of mind, not of the request.
EPISTEMIC = frozenset({"know", "sure", "idea", "understand", "remember", "clue", "certain", "think"})


def _negations(tokens: list[str]) -> int:
    count = 0
    for i, token in enumerate(tokens):
        if token in NEGATORS or token.endswith("n't"):
            following = [t for t in tokens[i + 1:i + 3] if t not in ("really", "quite", "even")]
            if not (following and following[0] in EPISTEMIC):
                count += 1
    return count


def _has(tokens: list[str], joined: str, phrase: str) -> bool:
    return f" {phrase} " in joined if " " in phrase else phrase in tokens


# Each word that starts an opposite: most question pairs contain none, and are done at once.
_OPPOSITE_STARTS = frozenset(word.split()[0] for pair in OPPOSITES for word in pair)


def polarity_differs(query: str, stored: str) -> bool:
    """One question is negated and the other is not, or they ask for opposites."""
    a, b = words(query), words(stored)
    if _negations(a) % 2 != _negations(b) % 2:
        return True
    present = (set(a) | set(b)) & _OPPOSITE_STARTS
    if not present:
        return False
    ja, jb = f" {' '.join(a)} ", f" {' '.join(b)} "
    for x, y in OPPOSITES:
        if x.split()[0] not in present and y.split()[0] not in present:
            continue
        ax, ay, bx, by = _has(a, ja, x), _has(a, ja, y), _has(b, jb, x), _has(b, jb, y)
        if (ax and not ay and by and not bx) or (ay and not ax and bx and not by):
            return True
    return False


# -- numbers, dates, times, versions, units, currencies ----------------------------------

_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*")
NUMBER_WORDS = {
    "zero": "0", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
    "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000", "dozen": "12",
    "half": "0.5", "quarter": "0.25", "twice": "2", "double": "2", "triple": "3",
}
UNITS = frozenset({
    "%", "$", "€", "£", "¥", "usd", "eur", "gbp", "jpy", "dollars", "euros", "pounds", "yen", "km", "miles", "mile",
    "kg", "lb", "lbs", "g", "oz", "m", "cm", "mm", "ft", "feet", "inch", "inches", "c", "f", "celsius",
    "fahrenheit", "kb", "mb", "gb", "tb", "ms", "seconds", "minutes", "hours", "days", "weeks", "months", "years",
    "am", "pm", "mph", "kmh", "l", "ml", "liters", "gallons", "cups",
})
_SYMBOLS = re.compile(r"[%$€£¥]")


def _quantities(text: str) -> tuple[list[str], set[str]]:
    lowered = text.lower()
    numbers = [n.replace(",", "") for n in _NUMBER.findall(lowered)]
    tokens = words(lowered)
    numbers += [NUMBER_WORDS[t] for t in tokens if t in NUMBER_WORDS]
    units = {t for t in tokens if t in UNITS} | set(_SYMBOLS.findall(lowered))
    units |= {m.group(1) for m in re.finditer(r"\d([a-z%]+)\b", lowered) if m.group(1) in UNITS}
    return sorted(numbers), units


def numbers_differ(query: str, stored: str) -> bool:
    """Different numbers ("top 3" vs "top 10", "15% of 80" vs "15% of 60", dates, times,
    versions), or the same numbers in different units or currencies."""
    na, ua = _quantities(query)
    nb, ub = _quantities(stored)
    if na != nb:
        return True
    return bool(na) and ua != ub


# -- named entities, quoted strings, identifiers, file names, URLs -----------------------

_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|`([^`]+)`|'([^']{2,})'(?![a-z])")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b")
_FILE = re.compile(r"\b[\w-]+\.(?:[a-z0-9]{1,5})\b", re.IGNORECASE)
_IDENT = re.compile(r"\b(?:[a-z]+_[a-z0-9_]+|[a-z]+[A-Z][A-Za-z0-9]*|[A-Za-z_]\w*\(\)|\w+(?:\.\w+){1,}\w*)\b")
_CAPITALISED = re.compile(r"\b[A-Z][a-zA-Z0-9]+\b")
_SENTENCE_START = re.compile(r"(?:^|[.!?]\s+)$")


def _entities(text: str) -> set[str]:
    found: set[str] = set()
    for match in _QUOTED.finditer(text):
        found.add(next(g for g in match.groups() if g).strip().lower())
    for pattern in (_URL, _EMAIL, _FILE, _IDENT):
        found |= {m.group(0).lower().rstrip(".,;:!?") for m in pattern.finditer(text)}
    text = text.strip()
    for match in _CAPITALISED.finditer(text):  # a capital not explained by a sentence start
        if match.group(0) != "I" and not _SENTENCE_START.search(text[:match.start()]):
            found.add(match.group(0).lower())
    return found


def entities_differ(query: str, stored: str) -> bool:
    """A name, quoted string, code identifier, file name or URL that one question has and
    the other does not even mention in lower case ("Paris" vs "London"; but "Password"
    vs "password" is the same word)."""
    ea, eb = _entities(query), _entities(stored)
    la, lb = f" {' '.join(words(query))} ", f" {' '.join(words(stored))} "
    only_a = {e for e in ea - eb if f" {' '.join(words(e))} " not in lb}
    only_b = {e for e in eb - ea if f" {' '.join(words(e))} " not in la}
    return bool(only_a or only_b)


# -- direction and role -------------------------------------------------------------------

# "to" is a relation only beside "from" or a verb of conversion ("from A to B", "convert
# A to B"); elsewhere it is mostly "want to ...".
RELATIONS = ("from", "to", "into", "than", "vs", "versus", "onto", "towards", "toward")
CONVERSIONS = frozenset({"from", "convert", "translate", "change", "exchange", "transfer", "move", "switch"})
STOPWORDS = frozenset({
    "a", "an", "the", "is", "are", "was", "were", "be", "do", "does", "did", "i", "you", "we", "my", "your", "me",
    "what", "which", "who", "how", "when", "where", "why", "can", "could", "would", "should", "will", "please",
    "of", "in", "on", "at", "it", "this", "that", "there", "get", "go", "much", "many", "some", "any", "about",
    "and", "or", "with", "by", "for", *RELATIONS,
})


def _roles(tokens: list[str]) -> dict[str, str]:
    """Each relation word and the first content word after it."""
    roles: dict[str, str] = {}
    for i, token in enumerate(tokens):
        if token == "to" and not CONVERSIONS & set(tokens):
            continue
        if token in RELATIONS and token not in roles:
            following = next((t for t in tokens[i + 1:] if t not in STOPWORDS), None)
            if following is not None:
                roles[token] = following
    return roles


def direction_differs(query: str, stored: str) -> bool:
    """The same words in swapped roles: "flights from Paris to Rome" vs "from Rome to
    Paris", "is A bigger than B" vs "is B bigger than A", "convert km to miles" vs
    "miles to km". A different order with the same roles ("to Rome from Paris") is fine."""
    a, b = words(query), words(stored)
    ra, rb = _roles(a), _roles(b)
    shared = set(a) & set(b)
    for relation in ra.keys() & rb.keys():
        x, y = ra[relation], rb[relation]
        if x != y and x in shared and y in shared:
            return True
    return False


GUARDS: dict[str, Callable[[str, str], bool]] = {
    "negation": polarity_differs,
    "number": numbers_differ,
    "entity": entities_differ,
    "direction": direction_differs,
}


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


def check(query: str, stored: str, enabled: tuple[str, ...]) -> str | None:
    """The name of the first enabled guard that fires, or None."""
    for name in enabled:
        if GUARDS[name](query, stored):
            return name
    return None
