"""The embedded corpus's words and its labelling rule: the topics with their entities, aspects, facts and
evaluative words, the names and places, `sentiment_score` / `sentiment_label` and `vocabulary()`.
saelib.data.corpus, which holds the grammar, re-exports every name.

Labelling rule (`sentiment_score`): split the text into clauses at punctuation, "but" and "and"; every
evaluative word w of polarity p in {+1, -1} scores -p if a negator precedes it in its clause, else
2p if an intensifier immediately precedes it, else p. The document's label is 1 if the summed score is
> 0 and 0 if < 0. So "the acting was very good, but the plot was bad" is positive (2 - 1) and "the
acting was good, but the plot was very bad" is negative (1 - 2).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# ============================================================================ tokens and the labelling rule

_TOKEN_RE = re.compile(r"[a-z]+|[^a-z\s]")  # words are runs of letters; every other visible character is a token


def word_tokens(text: str) -> list[str]:
    """Lower-case and split into words and single punctuation characters: "Not bad." -> ["not", "bad", "."]."""
    return _TOKEN_RE.findall(text.lower())


POSITIVE_GENERAL = ["good", "great", "excellent", "wonderful", "superb", "lovely", "fantastic", "brilliant",
                    "pleasant", "impressive", "outstanding", "solid", "nice", "perfect", "remarkable"]
NEGATIVE_GENERAL = ["bad", "poor", "terrible", "awful", "dreadful", "disappointing", "mediocre", "weak",
                    "horrible", "forgettable", "sloppy", "lousy", "annoying", "frustrating", "pointless"]
# evaluative verbs: base form -> (third person singular present, past)
POSITIVE_VERBS = {"love": ("loves", "loved"), "like": ("likes", "liked"), "enjoy": ("enjoys", "enjoyed"),
                  "adore": ("adores", "adored"), "recommend": ("recommends", "recommended")}
NEGATIVE_VERBS = {"hate": ("hates", "hated"), "dislike": ("dislikes", "disliked")}

EVALUATION_VERBS = {1: ["love", "like", "enjoy", "adore"], -1: ["hate", "dislike"]}  # "recommend": verdicts only
NEGATORS = ["not", "never"]
INTENSIFIERS = ["very", "really", "extremely", "truly", "incredibly", "genuinely", "highly"]
_CLAUSE_BREAKS = {".", ",", ";", "!", "?", ":", "but", "and"}


# ============================================================================ the lexicon, topic by topic

@dataclass(frozen=True)
class Topic:
    name: str
    kinds: list[str]                       # what the entity is: "film", "comedy", ... (singular)
    entities: list[str]                    # names of the reviewed things
    aspects: list[tuple[str, bool]]        # (noun, is_plural)
    positive: list[str]                    # topic-specific evaluative adjectives
    negative: list[str]
    facts: list[str]                       # neutral sentence templates, see _fill


FEMALE = ["Anna", "Maria", "Sofia", "Emma", "Laura", "Clara", "Julia", "Nina", "Rosa", "Alice", "Helen",
          "Grace", "Lucy", "Maya", "Eva", "Irene", "Hannah", "Leila", "Ines", "Olga"]
MALE = ["David", "Tom", "Peter", "Marco", "Jonas", "Oliver", "Samuel", "Daniel", "Leo", "Hugo", "Victor",
        "Omar", "Felix", "Adam", "Lucas", "Henry", "Ivan", "Kenji", "Pablo", "Ravi"]
SURNAMES = ["Berg", "Castillo", "Novak", "Lindqvist", "Okafor", "Tanaka", "Moreau", "Fischer", "Rossi",
            "Kowalski", "Haddad", "Silva", "Jensen", "Moretti", "Petrov", "Nakamura", "Dubois", "Adler"]
RELATIVES = [("friend", "friends"), ("sister", "sisters"), ("brother", "brothers"), ("cousin", "cousins"),
             ("colleague", "colleagues"), ("neighbour", "neighbours"), ("son", "sons"), ("daughter", "daughters")]
PLURAL_ONLY_RELATIVES = ["parents", "kids", "grandparents", "roommates"]
TIMES = ["last week", "last month", "yesterday", "on friday", "on sunday", "over the weekend", "in march",
         "in october", "during the holidays", "last summer", "a few days ago", "after work"]
PLACES = ["a small town", "a fishing village", "a big city", "the mountains", "a quiet suburb", "an island",
          "the desert", "a seaside town", "an old castle", "a busy harbour"]
CITIES = ["Lisbon", "Vienna", "Kyoto", "Oslo", "Marseille", "Krakow", "Seville", "Dublin", "Prague", "Tunis"]

TOPICS = [
    Topic(
        "film", ["film", "movie", "thriller", "comedy", "drama", "documentary", "western", "musical"],
        ["Night Harbor", "The Long Road", "Silver Creek", "Paper Moon", "Northern Lights", "The Last Summer",
         "Winter Garden", "Glass River", "The Hidden Hour", "Red Horizon", "Stone Bridge", "Falling Water"],
        [("plot", False), ("acting", False), ("script", False), ("ending", False), ("soundtrack", False),
         ("dialogue", False), ("cast", False), ("director", False), ("special effects", True),
         ("actors", True), ("jokes", True), ("scenes", True), ("costumes", True), ("camera work", False)],
        ["gripping", "funny", "moving", "clever", "stunning", "thrilling", "touching", "original"],
        ["boring", "predictable", "tedious", "confusing", "clumsy", "silly", "bland", "slow"],
        ["{E} is {a_kind} by {Full}.", "It is set in {place}.", "{Rel} and I watched it {time}.",
         "The story follows a {role} who {event}.", "{Full} directed it and {Name2} wrote the music.",
         "I saw it at the cinema {time}."],
    ),
    Topic(
        "restaurant", ["restaurant", "cafe", "bistro", "diner", "pizzeria", "noodle bar"],
        ["Casa Verde", "The Golden Spoon", "Blue Lantern", "Cafe Rosa", "The Olive Tree", "Little Saigon",
         "The Copper Pot", "Harbor Grill", "Green Table", "The Red Door", "Maison Blanche", "Sakura House"],
        [("food", False), ("service", False), ("soup", False), ("pasta", False), ("curry", False),
         ("dessert", False), ("bread", False), ("atmosphere", False), ("wine", False), ("staff", True),
         ("waiters", True), ("prices", True), ("portions", True), ("dumplings", True), ("noodles", True)],
        ["tasty", "delicious", "fresh", "friendly", "generous", "cosy", "flavourful", "fair"],
        ["bland", "greasy", "stale", "salty", "rude", "cold", "overpriced", "soggy"],
        ["{E} is {a_kind} near {place}.", "We went there for dinner {time}.", "I ordered the {dish}.",
         "{Rel} had the {dish} and I had the {dish2}.", "The chef is {Full}.", "We booked a table for four."],
    ),
    Topic(
        "book", ["book", "novel", "memoir", "biography", "mystery", "cookbook", "short story collection"],
        ["The Salt Road", "Letters from Home", "A Distant Shore", "The Iron Key", "Summer Rain",
         "The Glass House", "Whispers in the Night", "The Lost Map", "Blue Mountains", "The Orchard"],
        [("story", False), ("writing", False), ("ending", False), ("dialogue", False), ("pacing", False),
         ("translation", False), ("prose", False), ("characters", True), ("chapters", True),
         ("descriptions", True), ("twists", True)],
        ["gripping", "moving", "clever", "beautiful", "vivid", "thoughtful", "original", "charming"],
        ["boring", "predictable", "tedious", "confusing", "shallow", "flat", "repetitive", "dry"],
        ["{E} is {a_kind} by {Full}.", "I read it {time}.", "{Rel} gave it to me {time}.",
         "The story follows a {role} who {event}.", "It is set in {place}.", "It has about three hundred pages."],
    ),
    Topic(
        "product", ["blender", "kettle", "lamp", "backpack", "phone", "toaster", "camera", "vacuum cleaner"],
        ["Nova", "Orbit", "Zephyr", "Atlas", "Pico", "Lumen", "Vertex", "Comet"],
        [("battery", False), ("screen", False), ("design", False), ("price", False), ("cable", False),
         ("motor", False), ("lid", False), ("buttons", True), ("instructions", True), ("straps", True),
         ("materials", True)],
        ["reliable", "sturdy", "fast", "quiet", "handy", "elegant", "practical", "powerful"],
        ["flimsy", "fragile", "noisy", "slow", "cheap", "clunky", "faulty", "leaky"],
        ["I bought the {E} {kind} {time}.", "It came in a small box.", "{Rel} and I use it every day.",
         "I use it in the kitchen.", "It arrived {time}.", "The {kind} comes in three colours."],
    ),
    Topic(
        "hotel", ["hotel", "hostel", "guesthouse", "resort", "inn"],
        ["Hotel Aurora", "The Grand Palace", "Seaview Inn", "Hotel Central", "The Old Mill", "Villa Sol",
         "Park Lodge", "The White Tower", "Hotel Mirador", "The Harbour House"],
        [("room", False), ("bed", False), ("breakfast", False), ("location", False), ("view", False),
         ("pool", False), ("bathroom", False), ("staff", True), ("rooms", True), ("beds", True),
         ("towels", True), ("prices", True)],
        ["clean", "comfortable", "spacious", "quiet", "friendly", "bright", "cosy", "helpful"],
        ["dirty", "cramped", "noisy", "rude", "dark", "shabby", "smelly", "overpriced"],
        ["{Rel} and I stayed at {E} in {City} {time}.", "{E} is {a_kind} in {City}.", "We stayed for three nights.",
         "The {kind} is close to the station.", "We arrived late in the evening.", "The owner is {Full}."],
    ),
    Topic(
        "album", ["album", "record", "live album", "debut album", "single"],
        ["Midnight Radio", "Golden Hour", "Paper Hearts", "Electric Sea", "Late Dancing", "Northern Sky",
         "Velvet Rooms", "Wild Flowers", "Neon Nights", "Open Roads"],
        [("voice", False), ("production", False), ("guitar", False), ("rhythm", False), ("title track", False),
         ("chorus", False), ("songs", True), ("lyrics", True), ("melodies", True), ("vocals", True),
         ("drums", True)],
        ["catchy", "beautiful", "haunting", "fresh", "powerful", "warm", "uplifting", "original"],
        ["repetitive", "dull", "shallow", "harsh", "thin", "messy", "bland", "flat"],
        ["{E} is the new {kind} by {Full}.", "I listened to it {time}.", "{Rel} played it in the car.",
         "It has twelve songs.", "{Full} recorded it in {City}.", "I heard it on the radio {time}."],
    ),
]
TOPIC_NAMES = [t.name for t in TOPICS]

ROLES = [("young doctor", "F"), ("retired teacher", "M"), ("lonely painter", "F"), ("police officer", "M"),
         ("farmer", "M"), ("singer", "F"), ("journalist", "F"), ("soldier", "M"), ("widow", "F"),
         ("fisherman", "M")]
EVENTS = ["leaves {pos} village", "returns to {pos} family", "loses {pos} job", "searches for {pos} brother",
          "moves to the city", "finds an old letter", "meets an old friend", "keeps a secret from {pos} friends"]
DISHES = ["soup", "pasta", "curry", "fish", "salad", "steak", "noodles", "dumplings", "pizza", "risotto"]


# ============================================================================ the labelling rule

def sentiment_score(text: str) -> int:
    """The compositional rule (module docstring): sum over evaluative words of +-1, flipped by a preceding
    negator in the clause, doubled by an intensifier right before. Text after "Sentiment:" is ignored."""
    tokens = word_tokens(text)
    if "sentiment" in tokens:
        tokens = tokens[: tokens.index("sentiment")]
    score, negated, previous = 0, False, None
    for tok in tokens:
        if tok in _CLAUSE_BREAKS:
            negated = False
        elif tok in NEGATORS:
            negated = True
        elif tok in POLARITY:
            p = POLARITY[tok]
            score += -p if negated else (2 * p if previous in INTENSIFIERS else p)
        previous = tok
    return score


def sentiment_label(text: str) -> int:
    score = sentiment_score(text)
    if score == 0:
        raise ValueError(f"text has sentiment score 0 (no evaluative words, or they cancel): {text!r}")
    return int(score > 0)


# The polarity of every evaluative word. A word evaluative in one topic is evaluative everywhere.
POLARITY: dict[str, int] = {}
for _sign, _adjectives, _verbs in ((1, POSITIVE_GENERAL, POSITIVE_VERBS), (-1, NEGATIVE_GENERAL, NEGATIVE_VERBS)):
    for _w in _adjectives + [w for t in TOPICS for w in (t.positive if _sign > 0 else t.negative)]:
        assert POLARITY.get(_w, _sign) == _sign, f"{_w!r} is listed as both positive and negative"
        POLARITY[_w] = _sign
    for _base, _forms in _verbs.items():
        POLARITY.update({v: _sign for v in (_base, *_forms)})
_names = {w for n in FEMALE + MALE + SURNAMES + [e for t in TOPICS for e in t.entities] for w in word_tokens(n)}
_clash = _names & (set(POLARITY) | set(NEGATORS) | set(INTENSIFIERS))
assert not _clash, f"names would carry sentiment: {_clash}"


# ============================================================================ vocabulary

def vocabulary() -> list[str]:
    """Every token the grammar can emit (sorted), gathered from the word lists and templates above."""
    strings: list[str] = []
    for t in TOPICS:
        strings += [t.name, *t.kinds, *t.entities, *t.positive, *t.negative, *t.facts]
        strings += [a for a, _ in t.aspects]
    strings += POSITIVE_GENERAL + NEGATIVE_GENERAL + NEGATORS + INTENSIFIERS + FEMALE + MALE + SURNAMES
    strings += list(POLARITY)
    strings += [w for pair in RELATIVES for w in pair] + PLURAL_ONLY_RELATIVES + TIMES + PLACES + CITIES
    strings += [r for r, _ in ROLES] + EVENTS + DISHES
    # the glue words the grammar (saelib.data.corpus._Writer) writes, and the prompts
    strings += ["I we my the a an it they them was were is are did do does think thinks thought her his",
                "Overall, I would recommend , but . Review: Sentiment: positive negative"]
    return sorted({w for s in strings for w in word_tokens(re.sub(r"\{\w+\}", " ", s))})  # drop {placeholders}
