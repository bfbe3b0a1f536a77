"""The built-in corpus: determinism, size, structure, and exact probability bookkeeping."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from newllm.data import builtin_corpus as bc
from newllm.data.builtin_corpus import BuiltinGrammar, generate_documents


@pytest.fixture(scope="module")
def grammar() -> BuiltinGrammar:
    return BuiltinGrammar()


@pytest.fixture(scope="module")
def docs(grammar) -> list[bc.BuiltinDocument]:
    return generate_documents(7, "train", 0, 12, grammar=grammar)


def test_same_seed_same_documents_other_seed_or_split_different(grammar, docs):
    again = generate_documents(7, "train", 0, 3, grammar=BuiltinGrammar())
    for a, b in zip(docs[:3], again):
        assert a.text == b.text
        np.testing.assert_array_equal(a.word_logprobs, b.word_logprobs)
        assert a.end_logprob == b.end_logprob
    other_seed = generate_documents(8, "train", 0, 3, grammar=grammar)
    other_split = generate_documents(7, "val", 0, 3, grammar=grammar)
    assert all(a.text != b.text for a, b in zip(docs[:3], other_seed))
    assert all(a.text != b.text for a, b in zip(docs[:3], other_split))


def test_documents_are_generated_independently_by_index(grammar, docs):
    assert generate_documents(7, "train", 5, 6, grammar=grammar)[0].text == docs[5].text


def test_document_lengths_vary_within_bounds(docs):
    lengths = [d.n_words for d in docs]
    assert all(bc.MIN_WORDS <= n <= bc.MAX_WORDS + 100 for n in lengths)
    assert max(lengths) - min(lengths) > 500


def test_capacity_is_far_above_two_million_tokens(grammar):
    # every document has >= MIN_WORDS words, and any index below MAX_DOCUMENTS can be generated on demand
    assert bc.MAX_DOCUMENTS * bc.MIN_WORDS >= 2_000_000
    last = generate_documents(3, "val", bc.MAX_DOCUMENTS - 1, bc.MAX_DOCUMENTS, grammar=grammar)[0]
    assert last.n_words >= bc.MIN_WORDS
    with pytest.raises(ValueError, match="out of range"):
        generate_documents(3, "train", 0, bc.MAX_DOCUMENTS + 1, grammar=grammar)
    with pytest.raises(ValueError, match="split"):
        generate_documents(3, "test", 0, 1, grammar=grammar)


def test_lexicon_is_unambiguous_and_covers_every_generated_word(grammar, docs):
    vocabulary = grammar.vocabulary()
    assert len(vocabulary) == len(set(vocabulary))
    assert set(w for d in docs for w in d.text.split()) <= set(vocabulary)


def test_topic_and_protagonist_persist_through_each_document(grammar, docs):
    names = set(grammar.names)
    for doc in docs:
        words = doc.text.split()
        topic = grammar.topic_words.index(words[0])
        other_topic_nouns = {w for t, nouns in enumerate(grammar.topic_nouns) if t != topic for pair in nouns for w in pair}
        assert not other_topic_nouns & set(words)
        assert len(names & set(words)) <= 1  # the first name used is the only one


def test_score_recovers_the_recorded_logprobs_from_the_words_alone(grammar, docs):
    for doc in docs[:4]:
        word_logprobs, end_logprob = BuiltinGrammar().score(doc.text.split())
        np.testing.assert_allclose(word_logprobs, doc.word_logprobs, rtol=0, atol=1e-12)
        assert end_logprob == pytest.approx(doc.end_logprob, abs=1e-12)
        assert np.all(doc.word_logprobs < 0) and doc.end_logprob <= 0


def test_hand_computed_probabilities_of_a_sentence(grammar):
    """Independent recomputation from the documented weights, including agreement across an attractor."""
    sentence = "sea the old king near some waves steers a boat . he".split()
    expected = [
        1 / 8,  # topic word, uniform over 8 topics
        0.8 * 0.5,  # no antecedent yet: not a name (0.2), "the" takes half of the rest
        0.3 * 0.4 / 10,  # first adjective (0.3), a shared one (0.4) of 10
        0.85 * 0.45 / 32,  # a noun after one adjective (1 - 0.15), a person noun (0.45) of 16 x 2 forms
        0.25 / 5,  # a preposition (0.25) of 5 after a noun-phrase subject
        0.2,  # "some" in a prepositional phrase
        0.7 * 0.55 / 8,  # plural only: a sea noun (0.55) of 8 plural forms
        0.85 * 0.5 / 5,  # verb after a modifier (0.85), a sea verb (0.5) of 5, SINGULAR like "king"
        0.2,  # "a" for the object
        0.7 * 0.55 / 8,  # singular sea noun
        0.6,  # "."
        0.3,  # pronoun for the previous subject: "he" (king is singular masculine)
    ]
    for n, (word, p) in enumerate(zip(sentence, expected)):
        dist = grammar.next_word_distribution(sentence[:n])
        assert dist[word] == pytest.approx(p, rel=1e-12), (n, word)
        assert math.fsum(dist.values()) == pytest.approx(1.0, abs=1e-12)
    after_attractor = grammar.next_word_distribution(sentence[:7])
    assert "steer" not in after_attractor and "they" not in grammar.next_word_distribution(sentence[:11])


def test_sampling_follows_the_recorded_distributions(grammar, docs):
    """Mean -log p of sampled words equals the mean entropy of the distributions they were drawn from."""
    surprisal, entropy = [], []
    for doc in docs[:6]:
        words = doc.text.split()
        for n in range(0, 400, 2):
            dist = grammar.next_word_distribution(words[:n])
            entropy.append(-sum(p * math.log(p) for p in dist.values()))
            surprisal.append(-math.log(dist[words[n]]))
    assert np.mean(surprisal) == pytest.approx(np.mean(entropy), abs=0.12)


def test_end_probability_and_its_bookkeeping(grammar, docs):
    assert bc.end_probability(bc.MIN_WORDS - 1) == 0.0 and bc.end_probability(bc.MAX_WORDS) == 1.0
    doc = docs[0]
    words = doc.text.split()
    assert doc.end_logprob == pytest.approx(math.log(bc.end_probability(len(words))))
    assert grammar.next_word_distribution(words)[bc.END_OF_DOCUMENT] == pytest.approx(math.exp(doc.end_logprob))


def test_score_rejects_text_outside_the_grammar(grammar):
    with pytest.raises(ValueError, match="cannot follow"):
        grammar.score("sea the king steer".split())
    with pytest.raises(ValueError, match="not a complete"):
        grammar.score("sea the king sees a boat .".split())  # too short to end


def test_optimum_is_far_below_unigram_and_bigram_perplexity(grammar):
    train = [d.text.split() for d in generate_documents(1, "train", 0, 40, grammar=grammar)]
    val = generate_documents(1, "val", 0, 5, grammar=grammar)
    optimum_ppl = math.exp(-sum(d.total_logprob for d in val) / sum(d.n_words + 1 for d in val))
    vocabulary = grammar.vocabulary()
    unigram = Counter(w for words in train for w in words)
    bigram = Counter(pair for words in train for pair in zip(words, words[1:]))
    total, v = sum(unigram.values()), len(vocabulary)
    unigram_nll, bigram_nll, count = 0.0, 0.0, 0
    for doc in val:
        words = doc.text.split()
        for prev, word in zip(words, words[1:]):
            unigram_nll -= math.log((unigram[word] + 0.1) / (total + 0.1 * v))
            bigram_nll -= math.log((bigram[prev, word] + 0.1) / (unigram[prev] + 0.1 * v))
            count += 1
    unigram_ppl, bigram_ppl = math.exp(unigram_nll / count), math.exp(bigram_nll / count)
    assert optimum_ppl < bigram_ppl < unigram_ppl
    assert optimum_ppl < unigram_ppl / 5  # context is worth a lot
