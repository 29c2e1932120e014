"""Another embedding or scoring server under the load ``electric bench service`` applies.

    python -m bench.peer --url http://127.0.0.1:7997/embeddings --model . \\
        [--onnx MODEL_DIR/model.onnx] [--json OUT.json]

The same 1,024 Brown sentences (bench/service_load.py ``load_sentences``, same seed), the same
wrk script, closed loop on 64 keep-alive connections, 1 and 8 sentences per request, counted
over 10 s after 2 s of warm-up. Bodies are OpenAI-style embedding requests,
``{"model": M, "input": [...]}``, which infinity-emb (michaelfeil/infinity) and
text-embeddings-inference both serve. Tokens are counted with the embedded artifact's
tokenizer (the uncased WordPiece of all-MiniLM-L6-v2, [CLS]/[SEP] left out), as for the
service, so tokens/s compare across the two.

``--onnx``: the peer's ONNX file timed bare in this process on length-sorted batches of 8 to 64,
one batch at a time on all the cores and two single-threaded batches at once, for the peer's
own ratio of served to bare throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine, wrk
from bench.service_load import TAIL_S, load_sentences, scored_tokens
from service.settings import default_artifact


def write_bodies(folder: Path, model: str, sentences: list[str], tokens: list[int],
                 per_request: int) -> tuple[Path, float]:
    path = folder / f"peer-{per_request}.jsonl"
    lines, counts = [], []
    for i in range(0, len(sentences), per_request):
        lines.append(json.dumps({"model": model, "input": sentences[i:i + per_request]}))
        counts.append(sum(tokens[i:i + per_request]))
    path.write_text("\n".join(lines) + "\n")
    return path, sum(counts) / len(counts)


def bare_onnx(path: Path, sentences: list[str], sizes: tuple[int, ...] = (8, 16, 32, 64),
              repeats: int = 3) -> dict[str, dict[str, float]]:
    """tokens/s of the peer's ONNX file on length-sorted batches, two ways."""
    import onnxruntime as ort

    from service.artifact import load_manifest
    from service.tokenization import SentenceTokenizer

    artifact = default_artifact()
    manifest = load_manifest(artifact)
    tokenizer = SentenceTokenizer.from_file(artifact / manifest.tokenizer.file,
                                            manifest.architecture.max_positions)
    encoded = sorted(tokenizer.encode(sentences, truncate=True), key=lambda e: e.length)
    tokens = sum(e.num_tokens for e in encoded)
    cores = os.cpu_count() or 1
    out: dict[str, dict[str, float]] = {}
    for name, runs, threads in (("one batch on all cores", 1, cores),
                                (f"{cores} single-threaded batches at once", cores, 1)):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        by_size: dict[str, float] = {}
        for size in sizes:
            feeds = []
            for start in range(0, len(encoded), size):
                chunk = encoded[start:start + size]
                width = max(e.length for e in chunk)
                ids = np.zeros((len(chunk), width), dtype=np.int64)
                for row, e in enumerate(chunk):
                    ids[row, :e.length] = e.ids
                batch = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64),
                         "token_type_ids": np.zeros_like(ids)}
                feeds.append({k: v for k, v in batch.items() if k in wanted})
            best = float("inf")
            with ThreadPoolExecutor(max_workers=runs) as pool:
                for _ in range(repeats):
                    start_t = time.perf_counter()
                    list(pool.map(lambda f, s=session: s.run(None, f), feeds))
                    best = min(best, time.perf_counter() - start_t)
            by_size[str(size)] = tokens / best
        out[name] = by_size
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the peer's embeddings endpoint")
    p.add_argument("--model", default=".", help="the model name its requests carry")
    p.add_argument("--onnx", type=Path, help="the peer's ONNX file, timed bare")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--per-request", default="1,8")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    sentences = load_sentences(1024, 20)
    tokens = scored_tokens(default_artifact(), sentences)
    result: dict[str, Any] = {"url": args.url, "machine": machine.describe(), "points": []}
    if args.onnx:
        result["bare"] = bare_onnx(args.onnx, sentences)
    with tempfile.TemporaryDirectory() as tmp:
        for k in (int(x) for x in args.per_request.split(",")):
            bodies, mean_tokens = write_bodies(Path(tmp), args.model, sentences, tokens, k)
            window = (args.warmup, args.warmup + args.duration)
            load = wrk.run(args.url, bodies, args.connections,
                           args.warmup + args.duration + TAIL_S, window=window)
            ok_per_s = load.window_ok / load.window_s
            result["points"].append({
                "per_request": k, "connections": args.connections,
                "requests_per_s": ok_per_s, "tokens_per_s": ok_per_s * mean_tokens,
                "p50_ms": load.p50_ms, "p99_ms": load.p99_ms, "non_200": load.non_200})
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
