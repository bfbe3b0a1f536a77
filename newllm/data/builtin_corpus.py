"""The built-in corpus: seeded synthetic English-like documents whose exact per-word probabilities are known.

Why: the kit must run with no download, on text where context matters, and with a known floor: the best
cross-entropy any model could reach.

How the entropy is known. The generator is a *deterministic* probabilistic automaton over words: in every state,
each word that may come next has one probability and leads to exactly one next state (every word form is unique
in the lexicon, which ``BuiltinGrammar`` checks at construction). So the state after a prefix is a function of the
prefix alone (replay the words from the start state, see ``score``), and p(next word | prefix) is exactly the
probability the generator sampled it with (there is no hidden variable to average over). The true conditional
distribution is the best possible predictor, so the optimum per-token cross-entropy of a split is the mean of
-log p over its predicted tokens, and its optimum perplexity is the exponential of that (about 10.5 per word
with this grammar, where a unigram model gets about 99). Under the word tokenizer built from ``BuiltinGrammar.vocabulary()`` one word is one
token and the document is wrapped in BOS ... EOS: BOS has probability 1 (it always follows EOS; the first token
of a stream is never predicted) and EOS carries the probability of ending the document there.

The grammar (probabilities are the named constants below):
- A document is a topic word (one of 8, uniform), then sentences. After each sentence the document ends with
  probability ``end_probability(words so far)``: 0 below ``MIN_WORDS``, then a hazard that makes lengths roughly
  uniform up to ``MAX_WORDS`` (forced end there). So documents have 200 to about 3000 words.
- Sentence: subject, optional prepositional phrases / one relative clause, verb, object, optional phrase, then
  "." or "and" + another verb phrase. Subjects are noun phrases ("the old king"), a name, or a pronoun.
- Context that pays off:
  * topic: the topic's own nouns, adjectives and verbs are drawn for the whole document (55 %, 60 %, 50 % of
    choices); other topics' words never appear in it.
  * protagonist: the first name used in a document is the only name used for the rest of it (hundreds of words).
  * agreement: the main verb agrees in number with its subject across prepositional phrases and a relative
    clause, whose own nouns are "attractors" of either number; "and" repeats a verb agreeing with the same
    subject; a sentence may open with a pronoun (he/she/it/they) agreeing in gender and number with the
    previous sentence's subject.
- Sampling: document ``index`` of ``split`` uses its own ``random.Random`` seeded from (seed, split, index), so
  documents are generated lazily and independently, in any order, and train and val are disjoint seed streams.
  ``random.Random`` streams are reproducible across Python versions. States are interned as integers with
  memoized transitions, so 2M words take a few seconds of one CPU core.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

SPLITS = ("train", "val")
MAX_DOCUMENTS = 1_000_000  # documents per split (at >= MIN_WORDS words each: far above 2M tokens)
MIN_WORDS = 200
MAX_WORDS = 3000
END_HAZARD_SCALE = 9.0  # about the mean sentence length: the end hazard is ~one sentence over the words left
END_OF_DOCUMENT = "<end-of-document>"  # key of the end event in next_word_distribution()

SG, PL, ANY = 0, 1, 2  # grammatical number (ANY: a determiner that allows both)
MASC, FEM, NEUT = 0, 1, 2

# ----------------------------------------------------------------------------------------------- lexicon
# "singular/plural" pairs for nouns and verbs. Every word form must be unique across the whole lexicon.
TOPICS: dict[str, dict[str, str]] = {
    "sea": dict(
        nouns="ship/ships wave/waves boat/boats shell/shells harbor/harbors rope/ropes net/nets island/islands",
        adjectives="salty stormy sandy windy",
        verbs="steers/steer rows/row ties/tie repairs/repair washes/wash",
    ),
    "forest": dict(
        nouns="tree/trees wolf/wolves path/paths leaf/leaves mushroom/mushrooms fox/foxes cabin/cabins owl/owls",
        adjectives="green mossy wild shady",
        verbs="climbs/climb hunts/hunt gathers/gather chops/chop hides/hide",
    ),
    "city": dict(
        nouns="street/streets car/cars tower/towers bridge/bridges train/trains shop/shops bus/buses lamp/lamps",
        adjectives="busy noisy modern crowded",
        verbs="drives/drive crosses/cross rents/rent builds/build cleans/clean",
    ),
    "mountain": dict(
        nouns="rock/rocks peak/peaks cave/caves goat/goats cliff/cliffs glacier/glaciers stream/streams eagle/eagles",
        adjectives="steep icy rocky high",
        verbs="scales/scale reaches/reach explores/explore photographs/photograph measures/measure",
    ),
    "kitchen": dict(
        nouns="pot/pots knife/knives bowl/bowls oven/ovens spoon/spoons loaf/loaves cup/cups plate/plates",
        adjectives="hot sweet warm spicy",
        verbs="cooks/cook stirs/stir bakes/bake slices/slice tastes/taste",
    ),
    "school": dict(
        nouns="book/books desk/desks lesson/lessons pencil/pencils map/maps bell/bells chair/chairs board/boards",
        adjectives="difficult boring useful new",
        verbs="reads/read writes/write studies/study draws/draw teaches/teach",
    ),
    "market": dict(
        nouns="coin/coins basket/baskets apple/apples stall/stalls cart/carts lemon/lemons melon/melons jar/jars",
        adjectives="cheap fresh ripe expensive",
        verbs="sells/sell buys/buy weighs/weigh counts/count trades/trade",
    ),
    "castle": dict(
        nouns="wall/walls gate/gates sword/swords horse/horses flag/flags throne/thrones crown/crowns dragon/dragons",
        adjectives="ancient royal golden grim",
        verbs="guards/guard defends/defend rides/ride polishes/polish attacks/attack",
    ),
}
PERSON_NOUNS = {
    MASC: "king/kings man/men boy/boys father/fathers brother/brothers monk/monks prince/princes uncle/uncles",
    FEM: "queen/queens woman/women girl/girls mother/mothers sister/sisters nun/nuns princess/princesses aunt/aunts",
}
NAMES = {
    MASC: "adam boris carl david erik felix george hugo ivan jack karl leo",
    FEM: "anna beth clara diana emma fiona grace helen iris julia kate lucy",
}
GENERAL_ADJECTIVES = "old young small big quiet strange happy tired brave careful"
GENERAL_VERBS = "sees/see finds/find likes/like wants/want takes/take holds/hold keeps/keep follows/follow " \
    "remembers/remember loses/lose"
PRONOUNS = {(SG, MASC): "he", (SG, FEM): "she", (SG, NEUT): "it", (PL, MASC): "they", (PL, FEM): "they",
            (PL, NEUT): "they"}
DETERMINER_NUMBER = {"the": ANY, "a": SG, "some": PL}
PREPOSITIONS = "near behind beside under above"
STOP, AND, THAT = ".", "and", "that"

# ------------------------------------------------------------------------------------------ probabilities
P_NAME = 0.2  # a sentence opens with the protagonist's name
P_PRONOUN = 0.3  # ... or with a pronoun for the previous subject (when there is one)
SUBJECT_DETERMINERS = {"the": 0.5, "a": 0.25, "some": 0.25}  # the rest of the sentence openings
OTHER_DETERMINERS = {"the": 0.6, "a": 0.2, "some": 0.2}  # objects, prepositional phrases, relative clauses
P_ADJECTIVE = (0.3, 0.15, 0.0)  # by the number of adjectives already in the noun phrase
P_TOPIC_ADJECTIVE, P_TOPIC_NOUN, P_TOPIC_VERB = 0.6, 0.55, 0.5  # topic's own words vs shared ones
AFTER_SUBJECT = {"prep": 0.25, THAT: 0.15, "verb": 0.6}  # after a noun-phrase subject
AFTER_MODIFIER = {"prep": 0.15, "verb": 0.85}  # after a name, a prepositional phrase or a relative clause
AFTER_OBJECT = {STOP: 0.6, AND: 0.15, "prep": 0.25}
AFTER_OBJECT_MODIFIER = {STOP: 0.8, AND: 0.2}

# automaton nodes and noun-phrase roles
BEGIN, START, DET, NP, POST_SUBJ, POST_MOD, VERB, REL_VERB, POST_OBJ, POST_OBJ_MOD = range(10)
SUBJ, PP_SUBJ, REL, OBJ, PP_OBJ = range(5)

# A state is a plain tuple (fast to build and hash):
# (node, topic, protagonist name index or -1, subject code or -1, noun-phrase role, determiner number,
#  adjectives so far, relative-clause subject number). Subject code = number * 3 + gender.
_BEGIN_STATE = (BEGIN, -1, -1, -1, SUBJ, ANY, 0, SG)
_AFTER_NOUN = {PP_SUBJ: POST_MOD, OBJ: POST_OBJ, PP_OBJ: POST_OBJ_MOD}  # where a non-subject noun phrase returns


def end_probability(words_so_far: int) -> float:
    """Probability that the document ends at a sentence boundary after ``words_so_far`` words."""
    if words_so_far < MIN_WORDS:
        return 0.0
    if words_so_far >= MAX_WORDS:
        return 1.0
    return END_HAZARD_SCALE / (MAX_WORDS - words_so_far + END_HAZARD_SCALE)


def _pairs(text: str) -> list[tuple[str, str]]:
    return [tuple(item.split("/")) for item in text.split()]  # type: ignore[misc]


@dataclass(frozen=True)
class BuiltinDocument:
    """One generated document and the exact log-probabilities (natural log) it was sampled with."""

    text: str  # the words joined by single spaces
    word_logprobs: np.ndarray  # log p(word_i | words before it), float64, one per word
    end_logprob: float  # log p(the document ends after its last word)

    @property
    def n_words(self) -> int:
        return len(self.word_logprobs)

    @property
    def total_logprob(self) -> float:
        """log p(document), the end included."""
        return float(self.word_logprobs.sum()) + self.end_logprob


@dataclass(frozen=True)
class _Choice:
    """A categorical distribution over next words, compiled for sampling (cumulative) and scoring (index)."""

    words: list[str]
    tags: list[tuple]
    logprobs: list[float]
    cumulative: list[float]
    index: dict[str, int]


class BuiltinGrammar:
    """The automaton: ``vocabulary()``, ``sample_document(rng)``, ``score(words)``, ``next_word_distribution``.

    Distributions are compiled lazily per distinct (node, relevant features) and kept in this instance.
    """

    def __init__(self) -> None:
        self.topic_words = list(TOPICS)
        self.topic_nouns = [_pairs(t["nouns"]) for t in TOPICS.values()]
        self.topic_adjectives = [t["adjectives"].split() for t in TOPICS.values()]
        self.topic_verbs = [_pairs(t["verbs"]) for t in TOPICS.values()]
        self.person_nouns = [(pair, gender) for gender in (MASC, FEM) for pair in _pairs(PERSON_NOUNS[gender])]
        self.names = [name for gender in (MASC, FEM) for name in NAMES[gender].split()]
        self.name_gender = [gender for gender in (MASC, FEM) for _ in NAMES[gender].split()]
        self.general_adjectives = GENERAL_ADJECTIVES.split()
        self.general_verbs = _pairs(GENERAL_VERBS)
        self.prepositions = PREPOSITIONS.split()
        self._vocabulary = self._build_vocabulary()
        self._choices: dict[tuple, _Choice] = {}  # by distribution key
        # interned full states for fast sampling: id -> state, its distribution, its successors by word index
        self._state_ids: dict[tuple, int] = {}
        self._states: list[tuple] = []
        self._state_choices: list[_Choice] = []
        self._successors: list[list[int]] = []

    # ------------------------------------------------------------------------------------- vocabulary
    def _build_vocabulary(self) -> list[str]:
        words = list(self.topic_words) + list(self.names) + sorted(set(PRONOUNS.values()))
        words += list(DETERMINER_NUMBER) + self.prepositions + [STOP, AND, THAT] + self.general_adjectives
        words += [w for pair, _ in self.person_nouns for w in pair]
        words += [w for pair in self.general_verbs for w in pair]
        for nouns, adjectives, verbs in zip(self.topic_nouns, self.topic_adjectives, self.topic_verbs):
            words += [w for pair in nouns for w in pair] + adjectives + [w for pair in verbs for w in pair]
        duplicates = sorted({w for w in words if words.count(w) > 1})
        if duplicates:  # a word in two roles would make the state ambiguous
            raise RuntimeError(f"built-in lexicon has duplicate word forms {duplicates}")
        return words

    def vocabulary(self) -> list[str]:
        """Every word the grammar can produce, in a fixed order (the word tokenizer's vocabulary)."""
        return list(self._vocabulary)

    # ---------------------------------------------------------------------------------- distributions
    @staticmethod
    def _key(state: tuple) -> tuple:
        """The part of the state the next-word distribution depends on."""
        node = state[0]
        if node == START:
            return (START, state[2], state[3])
        if node == NP:
            return (NP, state[1], state[5], state[6])
        if node in (POST_SUBJ, POST_MOD, VERB):
            return (node, state[1], state[3] // 3)
        if node == REL_VERB:
            return (VERB, state[1], state[7])
        return (node,)

    def _choice(self, state: tuple) -> _Choice:
        key = self._key(state)
        choice = self._choices.get(key)
        if choice is None:
            choice = self._compile(self._entries(key))
            self._choices[key] = choice
        return choice

    @staticmethod
    def _compile(entries: list[tuple[str, float, tuple]]) -> _Choice:
        entries = [e for e in entries if e[1] > 0]
        words = [e[0] for e in entries]
        if len(set(words)) != len(words):
            raise RuntimeError(f"ambiguous grammar state: a word appears twice among {words}")
        total = math.fsum(e[1] for e in entries)
        if abs(total - 1.0) > 1e-9:
            raise RuntimeError(f"next-word probabilities sum to {total}, not 1")
        cumulative = np.cumsum([e[1] for e in entries]).tolist()
        cumulative[-1] = 1.0  # so that bisect of any u in [0, 1) lands inside
        return _Choice(words, [e[2] for e in entries], [math.log(e[1]) for e in entries], cumulative,
                       {w: i for i, w in enumerate(words)})

    def _verbs(self, topic: int, number: int, weight: float) -> list[tuple[str, float, tuple]]:
        own, shared = self.topic_verbs[topic], self.general_verbs
        return [(pair[number], weight * P_TOPIC_VERB / len(own), ("verb",)) for pair in own] + [
            (pair[number], weight * (1 - P_TOPIC_VERB) / len(shared), ("verb",)) for pair in shared]

    def _entries(self, key: tuple) -> list[tuple[str, float, tuple]]:
        """(word, probability, tag) for every word that may come next; the tag tells ``_advance`` what it was."""
        node = key[0]
        if node == BEGIN:
            return [(w, 1 / len(self.topic_words), ("topic", t)) for t, w in enumerate(self.topic_words)]
        if node == START:
            _, protagonist, antecedent = key
            if protagonist >= 0:
                entries = [(self.names[protagonist], P_NAME, ("name", protagonist, self.name_gender[protagonist]))]
            else:
                entries = [(n, P_NAME / len(self.names), ("name", i, self.name_gender[i]))
                           for i, n in enumerate(self.names)]
            p_pronoun = P_PRONOUN if antecedent >= 0 else 0.0
            if p_pronoun:
                entries.append((PRONOUNS[divmod(antecedent, 3)], p_pronoun, ("pronoun",)))
            rest = 1.0 - P_NAME - p_pronoun
            return entries + [(d, rest * p, ("det", DETERMINER_NUMBER[d])) for d, p in SUBJECT_DETERMINERS.items()]
        if node == DET:
            return [(d, p, ("det", DETERMINER_NUMBER[d])) for d, p in OTHER_DETERMINERS.items()]
        if node == NP:
            _, topic, number, n_adjectives = key
            p_adj = P_ADJECTIVE[n_adjectives]
            own_adj, shared_adj = self.topic_adjectives[topic], self.general_adjectives
            entries = [(a, p_adj * P_TOPIC_ADJECTIVE / len(own_adj), ("adj",)) for a in own_adj]
            entries += [(a, p_adj * (1 - P_TOPIC_ADJECTIVE) / len(shared_adj), ("adj",)) for a in shared_adj]
            numbers = (SG, PL) if number == ANY else (number,)
            own = [(pair[n], n * 3 + NEUT) for pair in self.topic_nouns[topic] for n in numbers]
            people = [(pair[n], n * 3 + gender) for pair, gender in self.person_nouns for n in numbers]
            p_noun = 1.0 - p_adj
            entries += [(w, p_noun * P_TOPIC_NOUN / len(own), ("noun", code)) for w, code in own]
            entries += [(w, p_noun * (1 - P_TOPIC_NOUN) / len(people), ("noun", code)) for w, code in people]
            return entries
        if node in (POST_SUBJ, POST_MOD):
            _, topic, number = key
            shares = AFTER_SUBJECT if node == POST_SUBJ else AFTER_MODIFIER
            entries = [(p, shares["prep"] / len(self.prepositions), ("prep",)) for p in self.prepositions]
            if THAT in shares:
                entries.append((THAT, shares[THAT], ("that",)))
            return entries + self._verbs(topic, number, shares["verb"])
        if node == VERB:
            _, topic, number = key
            return self._verbs(topic, number, 1.0)
        if node in (POST_OBJ, POST_OBJ_MOD):
            shares = AFTER_OBJECT if node == POST_OBJ else AFTER_OBJECT_MODIFIER
            entries = [(STOP, shares[STOP], ("stop",)), (AND, shares[AND], ("and",))]
            if "prep" in shares:
                entries += [(p, shares["prep"] / len(self.prepositions), ("prep",)) for p in self.prepositions]
            return entries
        raise RuntimeError(f"unknown grammar node {node}")

    @staticmethod
    def _advance(state: tuple, tag: tuple) -> tuple:
        """The next state after a word with ``tag``: a pure function, so the state is recoverable from the prefix."""
        node, topic, protagonist, subject, role, number, n_adj, inner = state
        kind = tag[0]
        if kind == "topic":
            return (START, tag[1], -1, -1, SUBJ, ANY, 0, SG)
        if kind == "name":
            return (POST_MOD, topic, tag[1], SG * 3 + tag[2], SUBJ, ANY, 0, SG)
        if kind == "pronoun":  # the subject stays the previous sentence's subject
            return (VERB, topic, protagonist, subject, SUBJ, ANY, 0, SG)
        if kind == "det":
            return (NP, topic, protagonist, subject, SUBJ if node == START else role, tag[1], 0, inner)
        if kind == "adj":
            return (NP, topic, protagonist, subject, role, number, n_adj + 1, inner)
        if kind == "noun":
            code = tag[1]
            if role == SUBJ:
                return (POST_SUBJ, topic, protagonist, code, role, ANY, 0, SG)
            if role == REL:
                return (REL_VERB, topic, protagonist, subject, role, ANY, 0, code // 3)
            return (_AFTER_NOUN[role], topic, protagonist, subject, role, ANY, 0, SG)
        if kind == "prep":
            new_role = PP_SUBJ if node in (POST_SUBJ, POST_MOD) else PP_OBJ
            return (DET, topic, protagonist, subject, new_role, ANY, 0, SG)
        if kind == "that":
            return (DET, topic, protagonist, subject, REL, ANY, 0, SG)
        if kind == "verb":
            if node == REL_VERB:
                return (POST_MOD, topic, protagonist, subject, SUBJ, ANY, 0, SG)
            return (DET, topic, protagonist, subject, OBJ, ANY, 0, SG)
        if kind == "and":
            return (VERB, topic, protagonist, subject, SUBJ, ANY, 0, SG)
        if kind == "stop":
            return (START, topic, protagonist, subject, SUBJ, ANY, 0, SG)
        raise RuntimeError(f"unknown tag {tag}")

    # ------------------------------------------------------------------------- sampling and scoring
    def _state_id(self, state: tuple) -> int:
        """Intern a state as a small integer, with its distribution and a slot per next word for its successor."""
        sid = self._state_ids.get(state)
        if sid is None:
            sid = self._state_ids[state] = len(self._states)
            choice = self._choice(state)
            self._states.append(state)
            self._state_choices.append(choice)
            self._successors.append([-1] * len(choice.words))  # filled lazily by sample_document
        return sid

    def sample_document(self, rng: random.Random) -> BuiltinDocument:
        """Sample one document; one uniform draw per word (plus one for the end)."""
        # The hot loop (about a microsecond per word): states are interned ints, transitions memoized in lists.
        draw, bisect_right = rng.random, bisect.bisect_right
        states, choices, successors = self._states, self._state_choices, self._successors
        sid = self._state_id(_BEGIN_STATE)
        words: list[str] = []
        logprobs: list[float] = []
        while True:
            u = draw()
            log_continue = 0.0
            if states[sid][0] == START:
                p_end = end_probability(len(words))
                if u < p_end:
                    return BuiltinDocument(" ".join(words), np.asarray(logprobs, dtype=np.float64), math.log(p_end))
                u = (u - p_end) / (1.0 - p_end)  # reuse the draw: uniform on [0, 1) given "continue"
                log_continue = math.log1p(-p_end)
            choice = choices[sid]
            i = bisect_right(choice.cumulative, u)
            words.append(choice.words[i])
            logprobs.append(choice.logprobs[i] + log_continue)
            next_sid = successors[sid][i]
            if next_sid < 0:
                next_sid = successors[sid][i] = self._state_id(self._advance(states[sid], choice.tags[i]))
            sid = next_sid

    def _replay(self, words: Sequence[str]) -> tuple[tuple, list[float]]:
        state = _BEGIN_STATE
        logprobs = []
        for n, word in enumerate(words):
            log_continue = 0.0
            if state[0] == START:
                p_end = end_probability(n)
                if p_end >= 1.0:
                    raise ValueError(f"word {n} ({word!r}) comes after the point where every document ends")
                log_continue = math.log1p(-p_end)
            choice = self._choice(state)
            i = choice.index.get(word)
            if i is None:
                before = " ".join(words[max(0, n - 6):n])
                raise ValueError(f"word {n} ({word!r}) cannot follow {before!r} in the built-in grammar")
            logprobs.append(choice.logprobs[i] + log_continue)
            state = self._advance(state, choice.tags[i])
        return state, logprobs

    def score(self, words: Sequence[str]) -> tuple[np.ndarray, float]:
        """Exact log p of each word of a complete document given its prefix, and of the end; from the words alone."""
        state, logprobs = self._replay(words)
        p_end = end_probability(len(words)) if state[0] == START else 0.0
        if p_end == 0.0:
            raise ValueError("these words are not a complete built-in document (it cannot end here)")
        return np.asarray(logprobs, dtype=np.float64), math.log(p_end)

    def next_word_distribution(self, prefix: Sequence[str]) -> dict[str, float]:
        """p(next | prefix) for every possible next word (``END_OF_DOCUMENT``: the document ends)."""
        state, _ = self._replay(prefix)
        p_end = end_probability(len(prefix)) if state[0] == START else 0.0
        choice = self._choice(state)
        dist = {w: (1.0 - p_end) * math.exp(lp) for w, lp in zip(choice.words, choice.logprobs)}
        if p_end > 0:
            dist[END_OF_DOCUMENT] = p_end
        return dist


def generator_fingerprint() -> str:
    """A hash of this module's source: any edit to the grammar invalidates token caches of built-in corpora."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def document_rng(seed: int, split: str, index: int) -> random.Random:
    """The random stream of one document: independent of every other (seed, split, index)."""
    digest = hashlib.sha256(f"newllm-builtin:{seed}:{split}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def generate_documents(
    seed: int, split: str, start: int, stop: int, progress: bool = False, grammar: Optional[BuiltinGrammar] = None
) -> list[BuiltinDocument]:
    """Documents ``start .. stop-1`` of ``split`` ("train" or "val") for ``seed``; deterministic."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a built-in corpus split; use one of {SPLITS}")
    if not 0 <= start <= stop <= MAX_DOCUMENTS:
        raise ValueError(
            f"built-in documents [{start}, {stop}) are out of range: each split has {MAX_DOCUMENTS:,} documents "
            f"(indices 0 .. {MAX_DOCUMENTS - 1})"
        )
    grammar = grammar or BuiltinGrammar()
    indices = tqdm(range(start, stop), desc=f"builtin {split}", unit="doc", disable=not progress)
    return [grammar.sample_document(document_rng(seed, split, i)) for i in indices]
