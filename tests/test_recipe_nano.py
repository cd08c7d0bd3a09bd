"""The nano recipe (phi4r.recipes.nano): its prompts and traces, its SFT data, and its place.

The traces are the recipe's, written for a 3.6M model; the instances are the benchmark tasks'.
"""
import json
import re
import statistics
from pathlib import Path

from phi4r.recipes.nano import arith_eval
from phi4r.recipes.nano import calendar as nano_calendar
from phi4r.recipes.nano import data, evaluation, recipe
from phi4r.recipes.nano import spatialmap as nano_spatial
from phi4r.recipes.nano.spatialmap import ORIGIN
from phi4r.tasks import get_task

spatial, calendar = get_task("spatialmap"), get_task("calendar")


def minutes(hhmm):
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def test_spatialmap_teacher_writes_each_placement_as_true_sums():
    """Each placement's sums count in steps of one (`7 + 3 = 8 + 2 = 9 + 1 = 10`): every step moves
    one and has one less to go, and the last value is the record's coordinate."""
    steps = 0
    for inst in spatial.generate(20, 3, difficulty=2):
        text = nano_spatial.teacher(inst)
        found = re.findall(r"x ([^,]+), y ([^,]+), so \(\w+ (-?\d+) (-?\d+)\)\.", text)
        assert len(found) == len(inst.answer["links"])
        for *chains, cx, cy in found:
            for chain, result in zip(chains, (cx, cy)):
                terms = chain.split(" = ")
                pairs = [re.fullmatch(r"(-?\d+) ([+-]) (\d+)", t).groups() for t in terms[:-1]]
                for (a, sign, n), (b, sign2, m) in zip(pairs, pairs[1:]):
                    assert sign == sign2 and int(m) == int(n) - 1
                    assert int(b) == int(a) + (1 if sign == "+" else -1)
                    steps += 1
                a, sign, n = pairs[-1]
                assert int(n) <= 1 and int(terms[-1]) == int(a) + (1 if sign == "+" else -1) * int(n) == int(result)
    assert steps > 50


def test_spatialmap_teacher_keeps_each_place_in_one_record_everywhere():
    """The trace's lookups are copies: wherever the record `(X a b)` appears, (a, b) is X's one
    position (relative to the first place); the prompt never has a name glued to a bracket, so
    every earlier `(X` is followed by the same coordinates; the trace ends on the option the
    verifier accepts."""
    for inst in spatial.generate(30, 4, difficulty=1):
        text = nano_spatial.teacher(inst)
        pos = inst.answer["positions"]
        x0, y0 = pos[inst.answer["order"][0]]
        records = re.findall(r"\((\w+) (-?\d+) (-?\d+)\)", text)
        assert {name for name, _, _ in records} >= set(inst.answer["order"])
        for name, x, y in records:
            assert (int(x), int(y)) == (pos[name][0] - x0 + ORIGIN, pos[name][1] - y0 + ORIGIN)
        assert not re.search(r"\(\w", data.prompt(inst).replace("(blocks", "").replace("(same", ""))
        assert re.search(r"^[A-D]\. .*yes[,.]", text, re.M)
        assert spatial.score(inst, text) == 1.0


def test_spatialmap_teacher_sums_are_unsigned_and_axes_are_named():
    """At levels 1-2 the first place at (ORIGIN, ORIGIN) keeps every coordinate non-negative; each
    comparison names its axis' direction, and the direction is those names put together."""
    compared = 0
    for level in (1, 2):
        for inst in spatial.generate(40, 6, difficulty=level):
            text = nano_spatial.teacher(inst)
            assert not re.search(r"\(\w+ -?\d+ -\d+\)|\(\w+ -\d+", text)
            for x, cx, nx, y, cy, ny, word in re.findall(
                    r"x (\d+) vs (\d+) (\w+), y (\d+) vs (\d+) (\w+), so (\w+)", text):
                compared += 1
                assert nx == ("east" if int(x) > int(cx) else "west" if int(x) < int(cx) else "same")
                assert ny == ("north" if int(y) > int(cy) else "south" if int(y) < int(cy) else "same")
                assert word == (ny if ny != "same" else "") + (nx if nx != "same" else "")
    assert compared > 80


def test_spatialmap_teacher_copies_the_question_then_follows_its_order():
    """The trace restates the prompt's question line word for word; a direction question is then
    answered subject first, as the question names it, and a count goes through the places by the
    prompt's numbers (`2. The bank`)."""
    kinds = set()
    for inst in spatial.generate(30, 8, difficulty=1):
        text = nano_spatial.teacher(inst)
        asked = re.search(r"^Question: .+$", data.prompt(inst), re.M).group(0)
        assert re.findall(r"^Question: .+$", text, re.M) == [asked]
        after = text.split(asked + "\n", 1)[1].splitlines()
        kinds.add(inst.answer["question"])
        if m := re.match(r"Question: In which direction is the (\w+) from the (\w+)\?", asked):
            assert re.match(rf"The {m.group(1)} \(\w+ \d+ \d+\) from the {m.group(2)} ", after[0])
        else:
            assert after[0].startswith(f"From the {inst.answer['reference']} (")
        if inst.answer["question"] == "count":
            numbered = dict(re.findall(r"^(\d+)\. The (\w+) is", data.prompt(inst), re.M))
            counted = re.findall(r"^(\d+)\. The (\w+)[ :]", "\n".join(after), re.M)
            assert counted[0] == ("0", inst.answer["order"][0])
            assert all(numbered[i] == name for i, name in counted[1:])
            assert len(counted) == len(inst.answer["order"])
    assert kinds == {"direction", "which_object", "count"}


def test_teacher_records_copy_each_line_and_the_sweep_is_true():
    """Two people (levels 1-2): the first person's line becomes `(Monday ...)` records, the second's
    `[Mon ...]`, one per day offered and identical wherever they recur; each step of the sweep writes
    the later start and earlier end of its two blocks and who ends first; each sum is a true sum;
    `fits` exactly when the meeting ends by the block's end."""
    steps = 0
    for level in (1, 2):
        for inst in calendar.generate(30, seed=12, difficulty=level):
            spec, text = inst.answer, nano_calendar.teacher(inst)
            first, second = spec["participants"]
            for person, (o, c), key in ((first, "()", lambda d: d), (second, "[]", lambda d: d[:3])):
                line = re.search(rf"^{person}: (.*)$", text, re.M).group(1)
                recs = re.findall(rf"\{o}(\w+) ([^{c}]*)\{c}", line)
                assert [k for k, _ in recs] == [key(d) for d in spec["days"]]
                for (k, blocks), day in zip(recs, spec["days"]):
                    assert blocks == (", ".join(spec["availability"][person].get(day, [])) or "none")
                    for again in re.findall(rf"\{o}{k} ([^{c}]*)\{c}", text):
                        assert again == blocks
            for a, b, c, d, a2, c2, lo, b2, d2, hi, who in re.findall(
                    r"^\w+ (\S+)-(\S+), \w+ (\S+)-(\S+): start (\S+) vs (\S+) later (\S+), "
                    r"end (\S+) vs (\S+) earlier (\S+) (\w+)", text, re.M):
                steps += 1
                assert (a2, c2, b2, d2) == (a, c, b, d)
                assert minutes(lo) == max(minutes(a), minutes(c)) and minutes(hi) == min(minutes(b), minutes(d))
                assert who == ("both" if b == d else first if minutes(b) < minutes(d) else second)
            for t0, n, t1, end, verdict in re.findall(r"(\d\d:\d\d) \+ (\d+) = (\d\d:\d\d) vs (\d\d:\d\d) (fits|too short)", text):
                assert minutes(t1) == minutes(t0) + int(n)
                assert (verdict == "fits") == (minutes(t1) <= minutes(end))
    assert steps > 100


def test_nano_calendar_trace_reaches_the_reference_slot_at_every_level():
    for level in calendar.difficulties:
        for inst in calendar.generate(12, seed=11, difficulty=level):
            assert calendar.score(inst, nano_calendar.teacher(inst)) == 1.0, inst.id


def test_nano_spatialmap_prompt_numbers_the_benchmarks_sentences():
    """The recipe's prompt is the benchmark's map, sentences numbered, the question labelled; the
    same instance keeps its answer."""
    for inst in spatial.generate(6, seed=2):
        mine, theirs = data.prompt(inst), inst.prompt
        numbered = re.findall(r"^\d+\. (The .+)$", mine, re.M)
        assert numbered and numbered == re.findall(r"^(The \w+ is .+)$", theirs, re.M)
        question = re.search(r"^Question: (.+)$", mine, re.M).group(1)
        assert f" {question} Available options:" in theirs
        assert mine.endswith('Answer as "Final Answer: X" where X is the letter.')
    arithmetic = get_task("arithmetic").generate(1, 0)[0]
    assert data.prompt(arithmetic) == arithmetic.prompt


def test_copy_conversations_repeat_the_prompt_word_for_word():
    convs = data.copy_conversations({"spatialmap": 4, "calendar": 2}, seed=5)
    assert len(convs) == 6
    for user, assistant in convs:
        assert user["role"] == "user" and user["content"].startswith(data.COPY_PROMPT)
        text = user["content"][len(data.COPY_PROMPT):]
        answer = assistant["content"].split("</think>", 1)[1]
        assert answer.strip() == text.strip() and "Answer as" in text  # a whole task prompt, the recipe's


def test_sft_mix_counts_and_held_out_sets():
    mix = {"arithmetic": {1: 6}, "spatialmap": {1: 4, 2: 2}, "copy": {"spatialmap": 4}}
    convs = data.sft_conversations(mix, recipe.SFT_SEED_OFFSET)
    assert len(convs) == 6 + 6 + 4
    copies = [c for c in convs if c[0]["content"].startswith(data.COPY_PROMPT)]
    assert len(copies) == 4
    held_out = {data.prompt(i) for seed in (evaluation.DEV_SEED, evaluation.TEST_SEED, *evaluation.EVAL_SEEDS) for level in (1, 2)
                for i in spatial.generate(50, seed, difficulty=level)}
    for user, _ in convs:
        assert user["content"].removeprefix(data.COPY_PROMPT) not in held_out
    # Every taught conversation is the recipe's trace, which the task's verifier accepts.
    for inst in data.instances(mix, recipe.SFT_SEED_OFFSET):
        assert get_task(inst.task).score(inst, data.teach(inst)) == 1.0


def test_clock_times_are_one_piece_in_the_recipes_split_only(tmp_path):
    """The recipe's split keeps a clock time whole; the package's fine split writes it digit by digit."""
    from phi4r.tokenizer import train_bpe

    text = "Meet 08:30-09:30 or 12 blocks.\n"
    nano = train_bpe([text] * 50, vocab_size=320, pattern=data.SPLIT)
    fine = train_bpe([text] * 50, vocab_size=320, split="fine")
    pieces = lambda tok: [tok.decode([i]) for i in tok.encode(text)]
    assert pieces(nano)[:4] == ["Meet", " 08:30", "-", "09:30"] and " 1" in pieces(nano)
    assert " 08:30" not in pieces(fine) and "3" in pieces(fine)


def test_eval_runs_are_the_documented_commands():
    """The eval stage calls `run_eval` with what the report prints as `phi4r eval` command lines, per
    task and evaluation seed; the seeds are fixed, at least three, and none is the development seed."""
    seeds = evaluation.EVAL_SEEDS
    assert len(seeds) >= 3 and evaluation.DEV_SEED not in seeds and evaluation.TEST_SEED not in seeds
    runs = evaluation.eval_runs(Path("E"))
    assert len(runs) == 2 * (len(evaluation.EVAL) + len(evaluation.RECIPE_WORDING)) * len(seeds)
    task, out, args = runs[1]
    assert (task, str(out)) == ("arithmetic", f"E/arithmetic/greedy/seed-{seeds[0]}")
    assert args["sampling"]["temperature"] == 0.0
    assert evaluation.eval_command("M", task, str(out), args) == (
        f"phi4r eval --model M --tasks arithmetic --difficulty 1,2,3,4 --limit 50 --seed {seeds[0]} --max-tokens 768 "
        f"--max-num-seqs 64 --greedy --runs 1 --out E/arithmetic/greedy/seed-{seeds[0]}")


def test_recipe_wording_runs_ask_the_benchmark_instances_in_the_recipes_prompt():
    """spatialmap-recipe: the benchmark's instances of each seed and level (same ids, answers), each
    asked in the recipe's wording, evaluated by run_eval as given."""
    from phi4r.tasks import get_task

    seed = evaluation.EVAL_SEEDS[0]
    runs = [r for r in evaluation.eval_runs(Path("E"), tasks=["spatialmap"], seeds=[seed])]
    assert [str(out) for _, out, _ in runs] == [f"E/{label}/{kind}/seed-{seed}" for label in ("spatialmap", "spatialmap-recipe")
                                                 for kind in ("sampled", "greedy")]
    plain, worded = runs[0][2], runs[2][2]
    assert "instances" not in plain and evaluation.eval_command("M", "spatialmap", "o", worded).startswith("# o:")
    bench = [i for level in (1, 2) for i in get_task("spatialmap").generate(50, seed, difficulty=level)]
    assert [(i.id, i.answer) for i in worded["instances"]] == [(i.id, i.answer) for i in bench]
    assert [i.prompt for i in worded["instances"]] == [data.prompt(i) for i in bench]
    assert all(a.prompt != b.prompt for a, b in zip(worded["instances"], bench))


def test_eval_stage_runs_run_eval_and_the_report_reads_it(tmp_path, monkeypatch):
    """The evaluation of the shipped model (arithmetic level 1, 2 instances a seed; 2 column problems
    a category and seed): `run_eval` and `arith_eval` write their summaries under OUT/eval, a finished
    one is not run again, and the report's tables read them as mean ± std across the seeds."""
    from phi4r.checkpoint import NANO_DIR

    monkeypatch.setattr(evaluation, "EVAL", {"arithmetic": ([1], 2)})
    monkeypatch.setattr(evaluation, "COLUMNS_N", 2)
    eval_dir = tmp_path / "eval" / "grpo"
    evaluation.evaluate(NANO_DIR, eval_dir, log=lambda msg: None)
    seeds = evaluation.EVAL_SEEDS
    summaries = [eval_dir / "arithmetic" / kind / f"seed-{s}" / "summary.json" for kind in ("sampled", "greedy")
                 for s in seeds]
    assert all(p.is_file() for p in summaries) and (eval_dir / "columns" / "summary.json").is_file()
    stamp = summaries[0].stat().st_mtime_ns
    evaluation.evaluate(NANO_DIR, eval_dir, log=lambda msg: None)
    assert summaries[0].stat().st_mtime_ns == stamp
    rows = evaluation.results_table(tmp_path).splitlines()
    assert rows[0].startswith("| task | level | GRPO T=0.8 |") and len(rows) == 4  # no SFT evaluation here
    per_seed = [json.loads(p.read_text())["metrics"]["by_task"]["arithmetic"]["mean"] for p in summaries[3:]]
    greedy = rows[2].split(" | ")[3]
    assert greedy == f"{100 * statistics.mean(per_seed):.1f} ± {100 * statistics.stdev(per_seed):.1f}"
    columns = evaluation.columns_table(tmp_path).splitlines()
    assert len(columns) == 2 + len(arith_eval.CATEGORIES) and columns[2].startswith("| add_sub_2 | ")
