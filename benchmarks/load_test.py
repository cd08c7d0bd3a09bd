"""Load test of `phi4r serve`: many concurrent streaming chat clients on one server (loopback only).

    python benchmarks/load_test.py                           # starts a server itself (nano model)
    python benchmarks/load_test.py --requests 64 --concurrency 16 --max-tokens 128
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --api-key KEY

Each request streams a chat completion with `ignore_eos` (so every request generates exactly
--max-tokens tokens and runs compare) and `stream_options.include_usage`. Reports throughput
(completion tokens/s, requests/s), time to first token (first reasoning or content text) and request
latency percentiles, and every error; exits 1 if any request failed or the time limit ran out.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Result:
    ok: bool = False
    error: str = ""
    ttft: float | None = None
    latency: float = 0.0
    completion_tokens: int = 0
    chunks: int = 0


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    wall: float = 0.0

    def summary(self) -> dict:
        ok = [r for r in self.results if r.ok]
        tokens = sum(r.completion_tokens for r in ok)
        ttft = sorted(r.ttft for r in ok if r.ttft is not None)
        latency = sorted(r.latency for r in ok)
        return {
            "requests": len(self.results), "succeeded": len(ok), "failed": len(self.results) - len(ok),
            "wall_s": round(self.wall, 3), "completion_tokens": tokens,
            "tokens_per_s": round(tokens / self.wall, 1) if self.wall else 0.0,
            "requests_per_s": round(len(ok) / self.wall, 3) if self.wall else 0.0,
            "ttft_s": _percentiles(ttft), "latency_s": _percentiles(latency),
            "errors": sorted({r.error for r in self.results if not r.ok}),
        }


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    if len(values) == 1:
        return {k: round(values[0], 3) for k in ("p50", "p90", "p99", "mean")}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(cuts[49], 3), "p90": round(cuts[89], 3), "p99": round(cuts[98], 3),
            "mean": round(statistics.fmean(values), 3)}


async def one_request(client: httpx.AsyncClient, i: int, args) -> Result:
    body = {"model": args.served_model, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Request {i}: what is {i * 7 % 97} + {i * 13 % 89}?"}],
            "max_tokens": args.max_tokens, "ignore_eos": True, "seed": i}
    result, start = Result(), time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                result.error = f"HTTP {response.status_code}: {response.text[:200]}"
                return result
            done = False
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = f"stream error: {chunk['error'].get('message')}"
                    return result
                result.chunks += 1
                delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
                if result.ttft is None and (delta.get("reasoning_content") or delta.get("content")):
                    result.ttft = time.perf_counter() - start
                if chunk.get("usage"):
                    result.completion_tokens = chunk["usage"]["completion_tokens"]
            result.ok = done and result.completion_tokens > 0
            result.error = "" if result.ok else "stream ended without [DONE] or usage"
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as e:
        result.error = f"{type(e).__name__}: {e}"
    finally:
        result.latency = time.perf_counter() - start
    return result


async def run_load(args) -> Report:
    semaphore = asyncio.Semaphore(args.concurrency)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(args.timeout, connect=10)) as client:
        async def bounded(i):
            async with semaphore:
                return await one_request(client, i, args)

        report, start = Report(), time.perf_counter()
        report.results = await asyncio.gather(*(bounded(i) for i in range(args.requests)))
        report.wall = time.perf_counter() - start
    return report


# ---- a server of our own
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, workdir: Path) -> subprocess.Popen:
    model = args.model
    if model == "nano" and not (Path(__file__).resolve().parent.parent / "phi4r" / "assets" / "nano").is_dir():
        print("note: the nano model is not built yet; using a random tiny checkpoint instead", file=sys.stderr)
        model = "tiny"
    if model == "tiny":
        from phi4r.tiny import make_checkpoint

        model = str(make_checkpoint(workdir / "tiny", max_position_embeddings=2048, system_prompt="You are Phi."))
        args.model_label = "tiny (phi4r.tiny.make_checkpoint, random weights, 2 layers, hidden 64)"
    port = _free_port()
    args.url, args.served_model = f"http://127.0.0.1:{port}", "bench"
    command = [sys.executable, "-m", "phi4r.cli", "serve", "--model", model, "--port", str(port),
               "--served-model-name", "bench", "--max-num-seqs", str(args.max_num_seqs), "--log-level", "warning"]
    if args.server_threads:
        command += ["--threads", str(args.server_threads)]
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}")
        try:
            if httpx.get(args.url + "/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not become healthy within 180 s")


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running server on this machine [start one]")
    ap.add_argument("--model", default="nano", help="model for the server started here: nano, tiny or a path [nano]")
    ap.add_argument("--served-model", default=None, help="model name to send [the server's first]")
    ap.add_argument("--api-key", default=os.environ.get("PHI4R_API_KEY"))
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16, help="streams in flight at once [16]")
    ap.add_argument("--max-tokens", type=int, default=128, help="completion tokens per request [128]")
    ap.add_argument("--max-num-seqs", type=int, default=16, help="engine batch of the server started here [16]")
    ap.add_argument("--server-threads", type=int, help="torch threads of the server started here [torch's default]")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per request [300]")
    ap.add_argument("--time-limit", type=float, default=900.0, help="seconds for the whole run [900]")
    ap.add_argument("--json", help="also write the summary to this file")
    args = ap.parse_args()
    if args.requests > 10_000 or args.concurrency > 1024:
        ap.error("keep it bounded: at most 10000 requests and 1024 concurrent streams")
    args.model_label = args.model
    server = None
    with tempfile.TemporaryDirectory() as workdir:
        if args.url:
            if urlparse(args.url).hostname not in LOOPBACK:
                ap.error("--url must be a loopback address (127.0.0.1, localhost, ::1)")
            args.url = args.url.rstrip("/").removesuffix("/v1")
            args.model_label = "(running server)"
        else:
            server = start_server(args, Path(workdir))
        try:
            if args.served_model is None:
                headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
                args.served_model = httpx.get(args.url + "/v1/models", headers=headers).json()["data"][0]["id"]
            report = asyncio.run(asyncio.wait_for(run_load(args), args.time_limit))
        except TimeoutError:
            print(f"time limit of {args.time_limit:g} s ran out", file=sys.stderr)
            return 1
        finally:
            if server is not None:
                stop_server(server)
    summary = report.summary()
    summary.update(model=args.model_label, concurrency=args.concurrency, max_tokens=args.max_tokens)
    print(f"model {summary['model']}: {summary['requests']} requests, {args.concurrency} concurrent streams, "
          f"{args.max_tokens} completion tokens each")
    print(f"succeeded {summary['succeeded']}, failed {summary['failed']}, wall {summary['wall_s']} s")
    print(f"throughput {summary['tokens_per_s']} completion tokens/s, {summary['requests_per_s']} requests/s")
    for name in ("ttft_s", "latency_s"):
        p = summary[name]
        label = "time to first token" if name == "ttft_s" else "request latency"
        print(f"{label:20s} p50 {p.get('p50')} s, p90 {p.get('p90')} s, p99 {p.get('p99')} s, mean {p.get('mean')} s")
    for error in summary["errors"]:
        print(f"error: {error}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
