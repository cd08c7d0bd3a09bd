"""FlenQA-style long-input reasoning: a True/False question over a few facts hidden in filler text.

Categories follow FlenQA's three tasks: `monorel` (a chain of comparisons, asked transitively),
`pir` (people in rooms with properties) and `rules` (simplified RuleTaker: rules plus facts).
Levels pad the input to about 0 (facts only), 250, 500, 1000 and 3000 token-ish words; the
filler is generated from templates that never touch the facts' people, rooms or properties.
`load(path)` reads FLenQA's released set instead (see `from_record`).
"""
from __future__ import annotations

from .base import Instance, Score, Task, approx_tokens, last_match, trace
from .eureka import flenqa as eureka
from .external import RecordLoader, as_list, field

TARGETS = {1: 0, 2: 250, 3: 500, 4: 1000, 5: 3000}
PEOPLE = ["Ann", "Ben", "Cid", "Dora", "Eli", "Fay", "Gus", "Hana", "Ian", "Jo"]
RELATIONS = ["older", "taller", "richer", "faster", "stronger"]
ROOMS = ["kitchen", "garden", "attic", "cellar", "hallway", "study"]
COLOURS = ["blue", "red", "green", "yellow", "white", "grey"]
TRAITS = ["kind", "quiet", "brave", "smart", "calm", "funny", "polite", "shy"]

FILLER = {
    "subject": ["The harbour town", "A mountain village", "The old lighthouse", "The city council",
                "The river valley", "A local bakery", "The railway museum", "The island ferry",
                "The weekly market", "A small orchard", "The county library", "The stone bridge"],
    "verb": ["was rebuilt", "was mentioned in a guidebook", "attracted visitors",
             "changed its opening hours", "was photographed", "hosted a festival",
             "received new signs", "was repainted", "published a newsletter"],
    "time": ["last spring", "in the autumn", "during a storm", "after a long winter",
             "early in the morning", "on a rainy weekend", "many years ago", "in midsummer"],
    "detail": ["Tourists often arrive by bus.", "The weather there changes quickly.",
               "Its records go back a century.", "Maps of the area are sold nearby.",
               "Fishing boats leave before dawn.", "The paths are lined with pine trees.",
               "A clock tower stands at the centre.", "Most shops close at noon on Sundays.",
               "The soil is good for apples.", "Few cars pass through at night."],
}


def filler_sentence(rng) -> str:
    f = FILLER
    return f"{rng.choice(f['subject'])} {rng.choice(f['verb'])} {rng.choice(f['time'])}. {rng.choice(f['detail'])}"


def monorel(rng, people):
    rel, chain = rng.choice(RELATIONS), people[: rng.choice([3, 4])]
    facts = [f"{a} is {rel} than {b}." for a, b in zip(chain, chain[1:])]
    i, j = sorted(rng.sample(range(len(chain)), 2))
    while j - i < 2:  # ask about a pair that needs the chain, not one stated fact
        i, j = sorted(rng.sample(range(len(chain)), 2))
    truth = rng.random() < 0.5
    x, y = (chain[i], chain[j]) if truth else (chain[j], chain[i])
    reason = (f"The chain {' > '.join(chain)} ({rel}) puts {chain[i]} before {chain[j]}, "
              f"so {chain[i]} is {rel} than {chain[j]}.")
    return facts, f"Is {x} {rel} than {y}?", truth, reason


def pir(rng, people):
    rooms, colours = rng.sample(ROOMS, 2), rng.sample(COLOURS, 2)
    who = people[:2]
    facts = [f"{p} walked into the {r}." for p, r in zip(who, rooms)]
    facts += [f"The {r} is painted {c}." for r, c in zip(rooms, colours)]
    truth = rng.random() < 0.5
    asked = colours[0] if truth else colours[1]
    reason = f"{who[0]} is in the {rooms[0]}, which is {colours[0]}."
    return facts, f"Is {who[0]} in a {asked} room?", truth, reason


def rules(rng, people):
    t1, t2, goal = rng.sample(TRAITS, 3)
    a, b = people[:2]
    facts = [f"If someone is {t1}, then they are {goal}.", f"If someone is {t2}, then they are not {goal}.",
             f"{a} is {t1}.", f"{b} is {t2}."]
    truth = rng.random() < 0.5
    who, trait = (a, t1) if truth else (b, t2)
    reason = f"{who} is {trait}, and the rule for {trait} people makes them {'' if truth else 'not '}{goal}."
    return facts, f"Is {who} {goal}?", truth, reason


KINDS = {"monorel": monorel, "pir": pir, "rules": rules}
# FLenQA's `dataset` names for the three kinds.
RELEASE_KINDS = {"monorel": "monorel", "pir": "pir", "simplified ruletaker": "rules", "ruletaker": "rules"}


class FlenQA(RecordLoader, Task):
    name = "flenqa"
    difficulties = list(TARGETS)
    categories = list(KINDS)

    def make(self, rng, difficulty, k):
        kind = self.categories[k % len(self.categories)]
        facts, question, truth, reason = KINDS[kind](rng, rng.sample(PEOPLE, 4))
        rng.shuffle(facts)
        sentences: list[str] = []
        length = approx_tokens(" ".join(facts))
        while length < TARGETS[difficulty]:
            sentences.append(filler_sentence(rng))
            length += approx_tokens(sentences[-1])
        for fact in facts:  # each fact at a random place in the filler, in the shuffled order
            sentences.insert(rng.randint(0, len(sentences)), fact)
        text = " ".join(sentences)
        prompt = (f"Read the text and answer the question.\nText: {text}\nQuestion: {question}\n"
                  'Answer as "Final Answer: True" or "Final Answer: False".')
        return Instance(id="", task=self.name, prompt=prompt, category=kind, difficulty=difficulty,
                        answer={"truth": truth, "facts": facts, "reason": reason},
                        meta={"target_tokens": TARGETS[difficulty], "tokens": approx_tokens(prompt)})

    def from_record(self, record):
        """FLenQA's release (alonj/FLenQA): `assertion/question` (`question` once Eureka renames it),
        the padded text in `mixin`, `label` (`ground_truth`) True/False, `dataset` (MonoRel, PIR,
        Simplified RuleTaker), `rule`, `facts`, `ctx_size`, `padding_type`, `dispersion`."""
        question = str(field(record, "assertion/question", "question", "statement")).strip()
        label = str(field(record, "label", "ground_truth")).strip().lower()
        if label not in ("true", "false"):
            raise ValueError(f"label {label!r} is neither True nor False")
        kind = RELEASE_KINDS.get(str(field(record, "dataset", default="")).strip().lower(), "flenqa")
        text = str(field(record, "mixin", "text", "context"))
        rule = str(field(record, "rule", default="")).strip()
        lead = (f"Can the statement \"{question}\" be derived from the rule and the facts?\nRule: {rule}\nFacts: {text}"
                if kind == "rules" else f"Read the text and answer the question.\nText: {text}\nQuestion: {question}")
        prompt = f'{lead}\nAnswer as "Final Answer: True" or "Final Answer: False".'
        facts = field(record, "facts", default=[])
        facts = as_list(facts, "facts") if not isinstance(facts, str) or facts.strip().startswith("[") else [facts]
        size = str(field(record, "ctx_size", default=0))
        return Instance(id="", task=self.name, prompt=prompt, category=kind,
                        difficulty=int(size) if size.isdigit() else 0,
                        answer={"truth": label == "true", "facts": [str(f) for f in facts],
                                "reason": ""},
                        meta={k: record[k] for k in ("ctx_size", "padding_type", "dispersion", "dataset") if k in record})

    def parse(self, text):
        m = last_match(r"(?:final answer:|answer is)\s*\**\s*(true|false)\b", text.lower())
        return None if m is None else m.group(1) == "true"

    def check(self, inst, response):
        got = self.extract(response)
        return Score(float(got is not None and got == inst.answer["truth"]), got)

    eureka_source = "data_utils/flenqa_utils.py"

    def check_eureka(self, inst, response, judge=None):
        return eureka.check(response, inst.answer["truth"])

    def teacher(self, inst):
        facts, truth = inst.answer["facts"], inst.answer["truth"]
        question = inst.prompt.rsplit("Question: ", 1)[1].split("\n")[0]
        steps = ["Relevant facts: " + " ".join(facts), inst.answer["reason"],
                 f"{question} {'Yes' if truth else 'No'}: {truth}."]
        return trace(steps, f"Final Answer: {truth}")
