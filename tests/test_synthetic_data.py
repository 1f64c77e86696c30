"""Tests for the deterministic synthetic benchmark generator (benchmarks/synthetic_data.py)."""
from __future__ import annotations

import re

import pytest

from harness.benchmarks.synthetic_data import (
    ATTRIBUTES,
    MAX_PERTURBED,
    Passage,
    QAItem,
    SyntheticSplits,
    _generate_with_facts,
    generate,
    splits_fingerprint,
)

SPLITS = ("forget", "retain", "holdout")
# function words a short answer may share with its question without leaking its wording
STOPWORDS = {
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "by", "with", "from", "and", "is", "was",
    "has", "have", "does", "did", "what", "which", "where", "when", "who", "how", "he", "she", "his",
    "her", "him", "it", "that", "as",
}


def _qa(s: SyntheticSplits, split: str) -> list[QAItem]:
    return getattr(s, f"{split}_qa")


def _passages(s: SyntheticSplits, split: str) -> list[Passage]:
    return getattr(s, f"{split}_passages")


def _all_qa(s: SyntheticSplits) -> list[QAItem]:
    return [q for split in SPLITS for q in _qa(s, split)]


def _all_passages(s: SyntheticSplits) -> list[Passage]:
    return [p for split in SPLITS for p in _passages(s, split)]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@pytest.fixture(scope="module")
def default():
    return _generate_with_facts()


@pytest.fixture(scope="module", params=[0, 1, 7, 12345])
def many(request):
    return _generate_with_facts(num_forget=6, num_retain=9, num_holdout=6, qa_per_person=8,
                                num_perturbed=5, seed=request.param)


def test_deterministic_and_seed_sensitive():
    a, b = generate(seed=3), generate(seed=3)
    assert a == b
    assert splits_fingerprint(a) == splits_fingerprint(b)
    c = generate(seed=4)
    assert a != c
    assert splits_fingerprint(a) != splits_fingerprint(c)
    names_a = {p.person for p in _all_passages(a)}
    names_c = {p.person for p in _all_passages(c)}
    assert names_a != names_c
    assert generate() == generate(5, 10, 5, 4, 3, 0)


def test_fingerprint_format():
    fp = splits_fingerprint(generate())
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert splits_fingerprint(generate(num_perturbed=2)) != fp


@pytest.mark.parametrize("nf,nr,nh,k,m", [(5, 10, 5, 4, 3), (2, 3, 1, 8, 1), (0, 4, 2, 1, 5), (1, 0, 0, 2, 2)])
def test_split_sizes(nf, nr, nh, k, m):
    s = generate(num_forget=nf, num_retain=nr, num_holdout=nh, qa_per_person=k, num_perturbed=m, seed=9)
    for split, n in zip(SPLITS, (nf, nr, nh)):
        assert len(_qa(s, split)) == n * k
        assert len(_passages(s, split)) == n
        assert all(len(q.perturbed_answers) == m for q in _qa(s, split))
        assert all(isinstance(q.perturbed_answers, tuple) for q in _qa(s, split))


def test_persons_disjoint_and_ids_unique(many):
    s, _ = many
    people = {split: {p.person for p in _passages(s, split)} for split in SPLITS}
    assert not people["forget"] & people["retain"]
    assert not people["forget"] & people["holdout"]
    assert not people["retain"] & people["holdout"]
    for split in SPLITS:
        assert {q.person for q in _qa(s, split)} == people[split]
        assert all(q.id.startswith(f"{split}-p") for q in _qa(s, split))
        assert all(p.id.startswith(f"{split}-p") and p.id.endswith("-bio") for p in _passages(s, split))
    ids = [q.id for q in _all_qa(s)] + [p.id for p in _all_passages(s)]
    assert len(ids) == len(set(ids))


def test_names_are_unique_per_call(many):
    s, _ = many
    names = [p.person.split() for p in _all_passages(s)]
    assert all(len(n) == 2 for n in names)
    firsts = [n[0] for n in names]
    lasts = [n[1] for n in names]
    assert len(set(firsts)) == len(firsts)
    assert len(set(lasts)) == len(lasts)
    assert not set(firsts) & set(lasts)


def test_each_person_gets_distinct_attributes(many):
    s, facts = many
    by_person: dict[str, list[str]] = {}
    for q in _all_qa(s):
        by_person.setdefault(q.person, []).append(q.question)
    for questions in by_person.values():
        assert len(questions) == len(ATTRIBUTES) == len(set(questions))


def test_perturbed_answers_distinct(many):
    s, facts = many
    for q in _all_qa(s):
        pert = q.perturbed_answers
        assert len(set(pert)) == len(pert)
        assert q.paraphrased_answer not in pert
        assert q.answer not in pert
        key = facts[q.id][0]
        assert all(key not in p for p in pert), (q.id, key, pert)


def test_perturbed_share_paraphrase_wording(default):
    # only the fact changes: the paraphrase and each perturbed answer share their first words
    s, _ = default
    for q in _all_qa(s):
        head = q.paraphrased_answer.split()[:2]
        assert all(p.split()[:2] == head for p in q.perturbed_answers), q


def test_answers_short_and_free_of_name_and_question_wording(many):
    s, _ = many
    for q in _all_qa(s):
        assert 3 <= len(q.answer.split()) <= 10, q.answer
        assert len(q.paraphrased_answer.split()) <= 14, q.paraphrased_answer
        assert q.answer != q.paraphrased_answer
        answer_words = set(_words(q.answer))
        for part in q.person.split():
            assert part.lower() not in answer_words
            assert part.lower() not in set(_words(q.paraphrased_answer))
            assert all(part.lower() not in set(_words(p)) for p in q.perturbed_answers)
        shared = (set(_words(q.question)) & answer_words) - STOPWORDS
        assert not shared, (q.question, q.answer, shared)


def test_key_fact_in_answer_paraphrase_and_passage(many):
    s, facts = many
    passages = {p.person: p.text for p in _all_passages(s)}
    for q in _all_qa(s):
        for fact in facts[q.id]:
            # case-insensitive: a fact may open a sentence ("Tuning antique pianos, ...")
            assert fact.lower() in q.answer.lower(), (q.id, fact, q.answer)
            assert fact.lower() in q.paraphrased_answer.lower(), (q.id, fact, q.paraphrased_answer)
            assert fact.lower() in passages[q.person].lower(), (q.id, fact)


def test_capitalised_words_and_numbers_of_answers_occur_in_passage(many):
    # a helper-free check of the same property: every distinctive token of an answer
    # (capitalised word after the first, or number) is in that person's biography; answers
    # with lower-case facts only (profession, hobby) are covered by the test above
    s, _ = many
    passages = {p.person: set(re.findall(r"[A-Za-z0-9-]+", p.text)) for p in _all_passages(s)}
    checked = 0
    for q in _all_qa(s):
        tokens = re.findall(r"[A-Za-z0-9-]+", q.answer)[1:]
        distinctive = [t for t in tokens if t[0].isupper() or t.isdigit()]
        checked += bool(distinctive)
        assert all(t in passages[q.person] for t in distinctive), (q.answer, distinctive)
    assert checked >= len(_all_qa(s)) // 2


def test_passages(many):
    s, _ = many
    for p in _all_passages(s):
        assert p.text.startswith(p.person + " ") or p.text.startswith(p.person + ",")
        assert 50 <= len(p.text.split()) <= 70, len(p.text.split())


@pytest.mark.parametrize("seed", range(40))
def test_passage_lengths_over_seeds(seed):
    s = generate(num_forget=3, num_retain=3, num_holdout=3, seed=seed)
    for p in _all_passages(s):
        assert 50 <= len(p.text.split()) <= 70


def test_plain_ascii_single_line(many):
    s, _ = many
    texts = [p.text for p in _all_passages(s)]
    for q in _all_qa(s):
        texts += [q.id, q.person, q.question, q.answer, q.paraphrased_answer, *q.perturbed_answers]
    for t in texts:
        assert t.isascii() and "\n" not in t and "\r" not in t and t == t.strip() and "  " not in t, t


def test_invalid_arguments():
    with pytest.raises(ValueError):
        generate(qa_per_person=len(ATTRIBUTES) + 1)
    with pytest.raises(ValueError):
        generate(qa_per_person=0)
    with pytest.raises(ValueError):
        generate(num_perturbed=MAX_PERTURBED + 1)
    with pytest.raises(ValueError):
        generate(num_perturbed=0)
    with pytest.raises(ValueError):
        generate(num_forget=-1)
    assert len(generate(qa_per_person=len(ATTRIBUTES), num_perturbed=MAX_PERTURBED).forget_qa) == 5 * len(ATTRIBUTES)
