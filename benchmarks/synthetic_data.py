"""Deterministic generator for the offline ``synthetic`` unlearning benchmark.

What it generates
-----------------
A small world of clearly fictitious people. Every person gets eight facts (birth date,
birthplace, profession, employer, best-known work, award, hobby and pet), all built from
invented syllables and short word lists written for this module: no real people, places,
organisations or brands, and no third-party text of any kind. From those facts it builds

* question/answer pairs (``QAItem``): one fact per question, a short fact-dominated answer
  (3-10 words, never repeating the person's name or the question's wording), a paraphrased
  answer stating the same fact in other words, and ``num_perturbed`` perturbed answers that
  reuse the paraphrase's wording with the fact swapped for distinct wrong values of the same
  kind, so a truth ratio (perturbed vs paraphrased probability) isolates knowledge of the fact;
* one biography passage per person (``Passage``, about 50-70 words, starting with the person's
  name) that states the same fact values in varied sentence templates.

People are split into disjoint forget / retain / holdout groups.

Why
---
It is an offline benchmark that exercises all four scoring families of the harness without any
download: verbatim memorisation (continue the second half of a forget passage), knowledge
memorisation (ROUGE-L recall, answer probability and truth ratio on forget QA), privacy
(membership inference with forget texts as members and holdout texts as non-members) and
utility (QA on retain people). A small model fine-tuned on forget+retain (the target) knows the
forget facts, one fine-tuned on retain only does not; because the answers are dominated by
invented fact tokens, a model that never saw a person scores a low ROUGE-L recall on them.

Everything is a pure function of the arguments: a single ``random.Random(seed)`` drives all
choices, so the same arguments always give identical splits, and ``splits_fingerprint`` gives a
short, stable cache key for them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass
from typing import Callable

__all__ = [
    "QAItem",
    "Passage",
    "SyntheticSplits",
    "ATTRIBUTES",
    "MAX_PERTURBED",
    "generate",
    "splits_fingerprint",
]


@dataclass(frozen=True)
class QAItem:
    id: str
    person: str
    question: str
    answer: str
    paraphrased_answer: str
    perturbed_answers: tuple[str, ...]


@dataclass(frozen=True)
class Passage:
    id: str
    person: str
    text: str


@dataclass(frozen=True)
class SyntheticSplits:
    forget_qa: list[QAItem]
    retain_qa: list[QAItem]
    holdout_qa: list[QAItem]
    forget_passages: list[Passage]
    retain_passages: list[Passage]
    holdout_passages: list[Passage]


# ---------------------------------------------------------------------------------------------
# Invented vocabulary. Word parts are combined so that every name, town, region, organisation,
# title and award contains at least one invented word; every entry of the plain-English lists
# starts with a consonant so the article "a" is always right.
# ---------------------------------------------------------------------------------------------

_ONSETS = (
    "Ael", "Bryn", "Cael", "Drus", "Esk", "Fenn", "Gald", "Hyr", "Ilv", "Jorv", "Kael", "Lun",
    "Morv", "Nyr", "Oth", "Pell", "Quen", "Ryn", "Syl", "Tav", "Ulm", "Vash", "Xan", "Yss",
    "Zor", "Thal", "Vesk", "Orr", "Kesk", "Brael", "Dagh", "Ister",
)
_MIDDLES = ("a", "e", "i", "o", "u", "ae", "ia", "or", "en", "ar", "el", "is", "an", "ul")
_NAME_ENDS = (
    "kane", "mir", "dov", "wyn", "reth", "vane", "lix", "dra", "thos", "mara", "quin", "sel",
    "vik", "zeth", "lyn", "nor", "ric", "bek", "vey", "tal",
)
_PLACE_ENDS = (
    "ary", "oth", "esk", "und", "avel", "orin", "eth", "usk", "ara", "ovin", "mora", "hald",
    "ivar", "enne", "ask", "olm",
)
_PET_ONSETS = ("P", "T", "B", "D", "K", "M", "N", "Z", "F", "L", "G", "W")
_PET_VOWELS = ("i", "a", "o", "u", "e", "oo", "ee")
_PET_CODAS = ("m", "zzo", "bble", "x", "ck", "nn", "sh", "lo", "pi", "ddle", "ft", "mble")

_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)
_TOWN_KINDS = (
    "harbour town", "hill village", "river town", "mining town", "market town",
    "fishing village", "marsh village", "border town", "mountain hamlet", "lake town",
    "valley village", "coastal port",
)
# (profession, kind of best-known work)
_PROFESSIONS = (
    ("tide cartographer", "map series"),
    ("bell founder", "carillon"),
    ("marine botanist", "field guide"),
    ("clock restorer", "handbook"),
    ("puppet maker", "stage play"),
    ("bridge engineer", "bridge design"),
    ("lute maker", "songbook"),
    ("glass blower", "chandelier"),
    ("cheese chemist", "monograph"),
    ("kite designer", "glider"),
    ("lighthouse keeper", "memoir"),
    ("folk composer", "symphony"),
    ("cave surveyor", "survey"),
    ("textile printer", "pattern book"),
    ("crime novelist", "novel"),
    ("landscape painter", "painting"),
    ("soil scientist", "monograph"),
    ("radio tinkerer", "receiver"),
)
_ORG_TYPES = (
    "Glassworks", "Observatory", "Institute", "Foundry", "Academy", "Collective", "Archive",
    "Conservatory", "Shipyard", "Bureau", "Guild", "Workshop", "Laboratory", "Trust",
)
_TITLE_NOUNS = (
    "Lanterns", "Heron", "Tides", "Cipher", "Ledger", "Orchard", "Compass", "Winters",
    "Bells", "Harbour", "Embers", "Meridian", "Thistle", "Looms", "Sparrows", "Keys",
    "Weir", "Quarry", "Lantern", "Crossing",
)
_AWARD_TYPES = (
    "Medal", "Silver Laurel", "Gold Compass", "Copper Quill", "Crystal Key", "Iron Star",
    "Blue Ribbon", "Lantern Medal", "Cup", "Bronze Oak", "Garnet Seal", "Pewter Bell",
)
_HOBBIES = (
    "restoring sailing barges", "growing blue orchids", "carving chess pieces",
    "collecting sea glass", "winter sea swimming", "building box kites",
    "pressing wild flowers", "mapping old footpaths", "baking rye bread",
    "binding old books", "training carrier pigeons", "knitting striped scarves",
    "painting toy soldiers", "tuning antique pianos", "fermenting plum wine",
    "juggling wooden clubs",
)
_PET_SPECIES = (
    "grey parrot", "tabby cat", "basset hound", "black rabbit", "box turtle", "green iguana",
    "white ferret", "spotted gecko", "tortoise", "pygmy goat", "barn owl", "golden hamster",
    "corn snake", "sheepdog",
)

#: The facts every person has, in canonical order. ``qa_per_person`` may not exceed this.
ATTRIBUTES = (
    "birth_date", "birthplace", "profession", "organisation", "work", "award", "hobby", "pet",
)

#: Smallest categorical list that perturbed values are drawn from, minus the true value.
MAX_PERTURBED = min(len(_PROFESSIONS), len(_HOBBIES), len(_PET_SPECIES), len(_TOWN_KINDS)) - 1

_MAX_TRIES = 10_000


class _Namer:
    """Invents capitalised words, never the same one twice within one ``generate`` call."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def _unique(self, make: Callable[[], str]) -> str:
        for _ in range(_MAX_TRIES):
            word = make()
            if word.lower() not in self.used:
                self.used.add(word.lower())
                return word
        raise ValueError("ran out of invented words; ask for fewer people or perturbed answers")

    def person_word(self) -> str:
        r = self.rng

        def make() -> str:
            mid = r.choice(_MIDDLES) if r.random() < 0.6 else ""
            return r.choice(_ONSETS) + mid + r.choice(_NAME_ENDS)

        return self._unique(make)

    def place_word(self) -> str:
        r = self.rng

        def make() -> str:
            end = r.choice(_PLACE_ENDS)
            # before a vowel-initial ending only a consonant-final middle, so no "ooa" clusters
            middles = _MIDDLES if end[0] not in "aeiou" else tuple(m for m in _MIDDLES if m[-1] not in "aeiou")
            mid = r.choice(middles) if r.random() < 0.5 else ""
            return (r.choice(_ONSETS) + mid + end).capitalize()

        return self._unique(make)

    def pet_word(self) -> str:
        r = self.rng
        return self._unique(lambda: r.choice(_PET_ONSETS) + r.choice(_PET_VOWELS) + r.choice(_PET_CODAS))


# ---------------------------------------------------------------------------------------------
# Attribute specifications. ``value`` draws the true slots of a person; ``wrong`` draws one
# wrong value given the true slots and the values already drawn; ``facts`` names the slot
# strings that must appear verbatim in the answer, the paraphrase and the passage (the first
# is the key fact, which no perturbed answer may contain).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Attr:
    name: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    paraphrases: tuple[str, ...]
    facts: tuple[str, ...]
    value: Callable[[random.Random, _Namer, dict], dict]
    wrong: Callable[[random.Random, _Namer, dict, list], dict]


def _date_value(r: random.Random, namer: _Namer, person: dict) -> dict:
    day, month, year = r.randint(1, 28), r.choice(_MONTHS), r.randint(1931, 1994)
    return {"date": f"{day} {month} {year}", "year": year, "month": month}


def _date_wrong(r: random.Random, namer: _Namer, true: dict, taken: list) -> dict:
    years = {true["year"]} | {t["year"] for t in taken}
    while True:
        cand = _date_value(r, namer, {})
        if cand["year"] not in years and cand["month"] != true["month"]:
            return cand


def _place_value(r: random.Random, namer: _Namer, person: dict) -> dict:
    return {"town": namer.place_word(), "kind": r.choice(_TOWN_KINDS), "region": namer.place_word()}


def _place_wrong(r: random.Random, namer: _Namer, true: dict, taken: list) -> dict:
    kinds = [k for k in _TOWN_KINDS if k != true["kind"]]
    return {"town": namer.place_word(), "kind": r.choice(kinds), "region": namer.place_word()}


def _pick_other(r: random.Random, pool: tuple, exclude: set) -> str:
    return r.choice([p for p in pool if p not in exclude])


def _prof_value(r: random.Random, namer: _Namer, person: dict) -> dict:
    prof, kind = r.choice(_PROFESSIONS)
    return {"prof": prof, "work_kind": kind}


def _prof_wrong(r: random.Random, namer: _Namer, true: dict, taken: list) -> dict:
    used = {true["prof"]} | {t["prof"] for t in taken}
    return {"prof": _pick_other(r, tuple(p for p, _ in _PROFESSIONS), used)}


def _org_value(r: random.Random, namer: _Namer, person: dict) -> dict:
    return {"org": f"{namer.place_word()} {r.choice(_ORG_TYPES)}"}


def _org_wrong(r: random.Random, namer: _Namer, true: dict, taken: list) -> dict:
    return _org_value(r, namer, {})


def _work_value(r: random.Random, namer: _Namer, person: dict) -> dict:
    return {"title": f"The {namer.place_word()} {r.choice(_TITLE_NOUNS)}", "work_kind": person["work_kind"]}


def _work_wrong(r: random.Random, namer: _Namer, true: dict, taken: list) -> dict:
    return {"title": f"The {namer.place_word()} {r.choice(_TITLE_NOUNS)}", "work_kind": true["work_kind"]}


def _award_value(r: random.Random, namer: _Namer, person: dict) -> dict:
    return {"award": f"{namer.person_word()} {r.choice(_AWARD_TYPES)}"}


def _award_wrong(r: random.Random, namer: _Namer, true: dict, taken: list) -> dict:
    return _award_value(r, namer, {})


def _hobby_value(r: random.Random, namer: _Namer, person: dict) -> dict:
    hobby = r.choice(_HOBBIES)
    return {"hobby": hobby, "Hobby": hobby[0].upper() + hobby[1:]}


def _hobby_wrong(r: random.Random, namer: _Namer, true: dict, taken: list) -> dict:
    hobby = _pick_other(r, _HOBBIES, {true["hobby"]} | {t["hobby"] for t in taken})
    return {"hobby": hobby, "Hobby": hobby[0].upper() + hobby[1:]}


def _pet_value(r: random.Random, namer: _Namer, person: dict) -> dict:
    return {"pet": namer.pet_word(), "species": r.choice(_PET_SPECIES)}


def _pet_wrong(r: random.Random, namer: _Namer, true: dict, taken: list) -> dict:
    species = _pick_other(r, _PET_SPECIES, {true["species"]} | {t["species"] for t in taken})
    return {"pet": namer.pet_word(), "species": species}


_ATTRS: dict[str, _Attr] = {
    a.name: a
    for a in (
        _Attr(
            "birth_date",
            questions=("When was {name} born?", "On what date was {name} born?",
                       "What is the birthday of {name}?"),
            answers=("On {date}.", "It was {date}.", "That was on {date}."),
            paraphrases=("{Pos} birth date is {date}.", "{Pron} arrived in the world on {date}."),
            facts=("date",), value=_date_value, wrong=_date_wrong,
        ),
        _Attr(
            "birthplace",
            questions=("Where was {name} born?", "Where does {name} come from originally?",
                       "What is the birthplace of {name}?"),
            answers=("In {town}, a {kind} of {region}.", "{town}, a {kind} in {region}.",
                     "The {kind} of {town}, in {region}."),
            paraphrases=("{Pron} hails from {town}, a {kind} of {region}.",
                         "{Pos} home town is {town}, a {kind} of {region}."),
            facts=("town", "kind", "region"), value=_place_value, wrong=_place_wrong,
        ),
        _Attr(
            "profession",
            questions=("What does {name} do for a living?", "What is the profession of {name}?",
                       "What occupation does {name} have?"),
            answers=("A {prof} by trade.", "{Pron} is a {prof}.", "A {prof}."),
            paraphrases=("{Pron} earns {pos} keep as a {prof}.", "By training, {pron} is a {prof}."),
            facts=("prof",), value=_prof_value, wrong=_prof_wrong,
        ),
        _Attr(
            "organisation",
            questions=("Which organisation employs {name}?",
                       "Where has {name} spent most of {pos} career?",
                       "For which employer does {name} work?"),
            answers=("The {org}.", "At the {org}.", "Mostly at the {org}."),
            paraphrases=("{Pos} workplace is the {org}.", "{Pron} draws a salary from the {org}."),
            facts=("org",), value=_org_value, wrong=_org_wrong,
        ),
        _Attr(
            "work",
            questions=("What is {name} best known for creating?", "Which creation made {name} famous?",
                       "What is the most celebrated piece by {name}?"),
            answers=("A {work_kind} titled {title}.", "{title}, a {work_kind}.",
                     "The {work_kind} called {title}."),
            paraphrases=("{Pos} signature achievement is a {work_kind} named {title}.",
                         "{Pron} is admired for a {work_kind} named {title}."),
            facts=("title", "work_kind"), value=_work_value, wrong=_work_wrong,
        ),
        _Attr(
            "award",
            questions=("Which award did {name} receive?", "What honour was given to {name}?",
                       "Which prize has {name} won?"),
            answers=("The {award}.", "It was the {award}.", "{Pron} holds the {award}."),
            paraphrases=("{Pron} was decorated with the {award}.", "{Pos} trophy shelf holds the {award}."),
            facts=("award",), value=_award_value, wrong=_award_wrong,
        ),
        _Attr(
            "hobby",
            questions=("What hobby does {name} enjoy?", "How does {name} like to spend free time?",
                       "What pastime is {name} fond of?"),
            answers=("{Hobby}, whenever possible.", "{Pron} loves {hobby}.", "Mostly {hobby}."),
            paraphrases=("In idle hours, {pron} is usually {hobby}.",
                         "{Pos} favourite way to relax is {hobby}."),
            facts=("hobby",), value=_hobby_value, wrong=_hobby_wrong,
        ),
        _Attr(
            "pet",
            questions=("What pet does {name} keep?", "Which animal lives with {name}?",
                       "What companion animal does {name} own?"),
            answers=("A {species} called {pet}.", "{pet}, a {species}.", "{Pron} has a {species}, {pet}."),
            paraphrases=("{Pos} household includes a {species} named {pet}.",
                         "{Pron} looks after a {species} named {pet}."),
            facts=("pet", "species"), value=_pet_value, wrong=_pet_wrong,
        ),
    )
}
assert tuple(_ATTRS) == ATTRIBUTES


# ---------------------------------------------------------------------------------------------
# Biography templates: five sentence groups, each with several variants.
# ---------------------------------------------------------------------------------------------

_BIO_OPENING = (
    "{name} was born on {date} in {town}, a {kind} of {region}.",
    "{name}, born on {date}, grew up in {town}, a {kind} of {region}.",
    "{name} came into the world on {date} in {town}, a {kind} in {region}.",
)
_BIO_CAREER = (
    "{Pron} trained as a {prof} and spent most of {pos} career at the {org}.",
    "After years of study {pron} became a {prof} at the {org}.",
    "{Pron} works as a {prof} for the {org}, where colleagues value {pos} patience.",
)
_BIO_WORK = (
    "{Pos} best-known work is a {work_kind} titled {title}, which earned {obj} the {award}.",
    "{Pron} is remembered for a {work_kind} called {title}, and for it {pron} received the {award}.",
    "The {work_kind} known as {title} made {pos} name and brought {obj} the {award}.",
)
_BIO_LEISURE = (
    "Away from work {pron} enjoys {hobby} and keeps a {species} named {pet}.",
    "Friends know {obj} for {hobby} and for a {species} called {pet}.",
    "In {pos} spare time {pron} likes {hobby}, usually with {pos} {species}, {pet}, close by.",
)
_BIO_FILLER = (
    "Neighbours describe {obj} as quiet, curious and generous with {pos} time.",
    "{Pron} still visits {town} every summer to see old friends.",
    "Students often write to {obj} asking for advice.",
)
_BIO_MIN_WORDS, _BIO_MAX_WORDS = 50, 70


def _fmt(template: str, slots: dict) -> str:
    text = template.format(**slots)
    return text[0].upper() + text[1:]


def _make_person(r: random.Random, namer: _Namer) -> dict:
    first, last = namer.person_word(), namer.person_word()
    she = r.random() < 0.5
    person: dict = {
        "name": f"{first} {last}",
        "first": first,
        "last": last,
        "pron": "she" if she else "he",
        "Pron": "She" if she else "He",
        "pos": "her" if she else "his",
        "Pos": "Her" if she else "His",
        "obj": "her" if she else "him",
    }
    values: dict[str, dict] = {}
    for attr in ATTRIBUTES:
        v = _ATTRS[attr].value(r, namer, {**person, **{k: x for d in values.values() for k, x in d.items()}})
        values[attr] = v
    person["values"] = values
    return person


def _slots(person: dict, extra: dict | None = None) -> dict:
    slots = {k: v for k, v in person.items() if k != "values"}
    for v in person["values"].values():
        slots.update(v)
    if extra:
        slots.update(extra)
    return slots


def _make_passage(r: random.Random, person: dict) -> str:
    slots = _slots(person)
    text = ""
    for _ in range(50):
        parts = [_fmt(r.choice(g), slots) for g in (_BIO_OPENING, _BIO_CAREER, _BIO_WORK, _BIO_LEISURE)]
        fillers = [_fmt(f, slots) for f in _BIO_FILLER]
        r.shuffle(fillers)
        text = " ".join(parts)
        for filler in fillers:
            if len(text.split()) >= _BIO_MIN_WORDS:
                break
            text = f"{text} {filler}"
        if _BIO_MIN_WORDS <= len(text.split()) <= _BIO_MAX_WORDS:
            return text
    raise AssertionError(f"could not fit a biography into {_BIO_MIN_WORDS}-{_BIO_MAX_WORDS} words: {text}")


def _make_qa(r: random.Random, namer: _Namer, person: dict, attr_name: str, item_id: str,
             num_perturbed: int) -> tuple[QAItem, tuple[str, ...]]:
    attr = _ATTRS[attr_name]
    true = person["values"][attr_name]
    slots = _slots(person)
    question = _fmt(r.choice(attr.questions), slots)
    answer = _fmt(r.choice(attr.answers), slots)
    para_t = r.choice(attr.paraphrases)
    paraphrase = _fmt(para_t, slots)
    wrongs: list[dict] = []
    texts: list[str] = []
    key = true[attr.facts[0]]
    for _ in range(_MAX_TRIES):
        if len(texts) == num_perturbed:
            break
        w = attr.wrong(r, namer, true, wrongs)
        text = _fmt(para_t, _slots(person, w))
        if text != paraphrase and text not in texts and str(key) not in text:
            wrongs.append(w)
            texts.append(text)
    else:  # pragma: no cover - lists are checked against MAX_PERTURBED up front
        raise ValueError(f"could not draw {num_perturbed} distinct wrong values for {attr_name}")
    facts = tuple(str(true[f]) for f in attr.facts)
    item = QAItem(id=item_id, person=person["name"], question=question, answer=answer,
                  paraphrased_answer=paraphrase, perturbed_answers=tuple(texts))
    return item, facts


def _check_args(num_forget: int, num_retain: int, num_holdout: int, qa_per_person: int,
                num_perturbed: int) -> None:
    for label, n in (("num_forget", num_forget), ("num_retain", num_retain), ("num_holdout", num_holdout)):
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{label} must be a non-negative integer, got {n!r}")
    if not isinstance(qa_per_person, int) or not 1 <= qa_per_person <= len(ATTRIBUTES):
        raise ValueError(
            f"qa_per_person must be between 1 and {len(ATTRIBUTES)} (each person has {len(ATTRIBUTES)} "
            f"attributes: {', '.join(ATTRIBUTES)}), got {qa_per_person!r}"
        )
    if not isinstance(num_perturbed, int) or not 1 <= num_perturbed <= MAX_PERTURBED:
        raise ValueError(f"num_perturbed must be between 1 and {MAX_PERTURBED}, got {num_perturbed!r}")


def _generate_with_facts(num_forget: int = 5, num_retain: int = 10, num_holdout: int = 5,
                         qa_per_person: int = 4, num_perturbed: int = 3,
                         seed: int = 0) -> tuple[SyntheticSplits, dict[str, tuple[str, ...]]]:
    """Like ``generate``, plus a map from QA id to the fact strings that its answer, paraphrase
    and the person's passage all contain verbatim (the first one is the key fact)."""
    _check_args(num_forget, num_retain, num_holdout, qa_per_person, num_perturbed)
    r = random.Random(seed)
    namer = _Namer(r)
    facts: dict[str, tuple[str, ...]] = {}
    out: dict[str, tuple[list[QAItem], list[Passage]]] = {}
    for split, count in (("forget", num_forget), ("retain", num_retain), ("holdout", num_holdout)):
        qa: list[QAItem] = []
        passages: list[Passage] = []
        for i in range(count):
            person = _make_person(r, namer)
            pid = f"{split}-p{i:02d}"
            passages.append(Passage(id=f"{pid}-bio", person=person["name"], text=_make_passage(r, person)))
            chosen = sorted(r.sample(range(len(ATTRIBUTES)), qa_per_person))
            for j, a in enumerate(chosen):
                item, item_facts = _make_qa(r, namer, person, ATTRIBUTES[a], f"{pid}-q{j}", num_perturbed)
                qa.append(item)
                facts[item.id] = item_facts
        out[split] = (qa, passages)
    splits = SyntheticSplits(
        forget_qa=out["forget"][0], retain_qa=out["retain"][0], holdout_qa=out["holdout"][0],
        forget_passages=out["forget"][1], retain_passages=out["retain"][1],
        holdout_passages=out["holdout"][1],
    )
    return splits, facts


def generate(num_forget: int = 5, num_retain: int = 10, num_holdout: int = 5,
             qa_per_person: int = 4, num_perturbed: int = 3, seed: int = 0) -> SyntheticSplits:
    """Build the forget / retain / holdout people of the synthetic benchmark.

    Each person yields ``qa_per_person`` QA items (distinct attributes, ``num_perturbed``
    perturbed answers each) and one biography passage. Deterministic in all arguments.
    Raises ``ValueError`` for impossible requests (e.g. more QA per person than attributes).
    """
    return _generate_with_facts(num_forget, num_retain, num_holdout, qa_per_person, num_perturbed, seed)[0]


def splits_fingerprint(splits: SyntheticSplits) -> str:
    """First 16 hex digits of the sha256 of the splits' canonical JSON (a cache key)."""
    blob = json.dumps(dataclasses.asdict(splits), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()[:16]
