"""`phi4r generate`: complete a JSONL file of prompts offline, with continuous batching.

    phi4r generate --input prompts.jsonl --output out.jsonl --n 4 --max-tokens 4096
    phi4r generate --input prompts.jsonl --output out.jsonl      # again: resumes where it stopped

Input lines: {"prompt": "..."} (raw text) or {"messages": [{"role": ..., "content": ...}, ...]} (chat
format, the default system prompt injected unless the conversation has one), optionally with an "id"
(default: the line number, from 0). Output lines, in the order prompts finish:
{"id", "prompt" | "messages", "prompt_tokens", "outputs": [{"index", "text", "reasoning", "content",
"finish_reason", "completion_tokens", "reasoning_tokens", "content_tokens", "thinking_budget_reached"}]}.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

from ._options import add_model_args, add_sampling_args, load_llm, positive_int, sampling_params

EPILOG = ("Resuming: prompts whose id is already in --output are skipped, so an interrupted run continues "
          "where it stopped (with --seed, a resumed run gives the same samples as an uninterrupted one).")


class InputError(ValueError):
    """A bad input line (names the line)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="complete a JSONL file of prompts (batched, resumable)",
                              description=__doc__.split("\n")[0], epilog=EPILOG)
    p.add_argument("--input", required=True, help="JSONL: {\"prompt\": ...} or {\"messages\": [...]} per line")
    p.add_argument("--output", required=True, help="JSONL written as prompts finish (resumed if it exists)")
    p.add_argument("--n", type=positive_int, default=1, help="samples per prompt [1]")
    p.add_argument("--max-num-seqs", type=positive_int, default=16, help="samples generated together [16]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(p)
    add_sampling_args(p, loop_guard=False)
    p.set_defaults(func=_run)


def read_prompts(path: Path) -> list[dict]:
    """Input records with an "id" each; raises InputError naming the bad line."""
    records, seen = [], set()
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start})") from None
    # JSONL lines end at \n only (str.splitlines would also cut at a raw U+2028 inside a JSON string).
    for number, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        where = f"{path}, line {number + 1}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not JSON ({e})") from e
        if not isinstance(record, dict) or not (isinstance(record.get("prompt"), str)
                                                or isinstance(record.get("messages"), list)):
            raise InputError(f"{where}: needs a \"prompt\" string or a \"messages\" list")
        record.setdefault("id", number)
        if not isinstance(record["id"], (str, int)) or record["id"] in seen:
            raise InputError(f"{where}: the id must be a string or an integer, unique in the file")
        seen.add(record["id"])
        records.append(record)
    return records


def finished_ids(path: Path) -> set:
    """Ids already in the output; a last line cut short by a crash is removed so appending stays valid JSONL.
    A file this command did not write (the input given as --output, say) is refused untouched."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    complete, ids = data[:data.rfind(b"\n") + 1], set()
    for number, line in enumerate(complete.decode(errors="replace").split("\n")[:-1]):
        try:
            record = json.loads(line) if line.strip() else {"id": None, "outputs": None}
            if not isinstance(record, dict) or not {"id", "outputs"} <= record.keys():
                raise ValueError
            ids.add(record["id"])
        except (ValueError, TypeError):
            raise InputError(f"{path}, line {number + 1}: not a line phi4r generate writes; refusing to add to "
                             "this file") from None
    if complete != data:
        path.write_bytes(complete)
    return ids - {None}


def _request_seed(seed: int, record_id) -> int:
    # Per prompt, not per run: a resumed run samples each prompt exactly as an uninterrupted one would.
    return int.from_bytes(hashlib.sha256(f"{seed}:{record_id!r}".encode()).digest()[:7], "big")


def _result(record: dict, request) -> dict:
    source = {k: record[k] for k in ("prompt", "messages") if k in record}
    outputs = [{"index": o.index, "text": o.text, "reasoning": o.reasoning, "content": o.content,
                "finish_reason": o.finish_reason, "completion_tokens": len(o.token_ids),
                "reasoning_tokens": o.reasoning_tokens, "content_tokens": o.content_tokens,
                "thinking_budget_reached": o.thinking_budget_reached} for o in request.outputs]
    return {"id": record["id"], **source, "prompt_tokens": request.num_prompt_tokens, "outputs": outputs}


def _run(args) -> int:
    from tqdm.auto import tqdm

    output = Path(args.output)
    params = sampling_params(args, n=args.n)
    records = read_prompts(Path(args.input))
    done = finished_ids(output)
    todo = [r for r in records if r["id"] not in done]
    if done:
        print(f"resuming: {len(records) - len(todo)} of {len(records)} prompts already in {output}", file=sys.stderr)
    if not todo:
        return 0
    llm = load_llm(args, "generate", max_num_seqs=max(args.max_num_seqs, args.n), seed=args.seed)
    engine, tokenizer = llm.engine, llm.tokenizer
    pending, failed = {}, 0
    for record in todo:
        seeded = params if args.seed is None else dataclasses.replace(params, seed=_request_seed(args.seed, record["id"]))
        try:
            if "messages" in record:
                ids = tokenizer.encode_chat(record["messages"], True, args.system_prompt)
            else:
                ids = tokenizer.encode(record["prompt"])
            pending[engine.add_request(None, ids, seeded)] = record
        except (ValueError, TypeError, KeyError) as e:  # too long for the context, malformed messages, ...
            failed += 1
            print(f"phi4r generate: id {record['id']!r} skipped: {e}", file=sys.stderr)
    tokens = 0
    with output.open("a") as out, tqdm(total=len(pending), desc="prompts", unit="prompt", disable=args.quiet) as bar:
        try:
            while pending:
                for delta in engine.step():
                    tokens += len(delta.token_ids)
                    if delta.request is not None and delta.request_id in pending:
                        record = pending.pop(delta.request_id)
                        out.write(json.dumps(_result(record, delta.request), ensure_ascii=False) + "\n")
                        out.flush()
                        bar.update(1)
                bar.set_postfix(tok_s=f"{tokens / max(bar.format_dict['elapsed'], 1e-9):.1f}", refresh=False)
        except KeyboardInterrupt:
            print(f"\ninterrupted: {bar.n} prompts written to {output}; run the same command again to resume",
                  file=sys.stderr)
            return 130
    return 1 if failed else 0
