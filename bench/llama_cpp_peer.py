#!/usr/bin/env python3
"""llama.cpp (via llama-cpp-python) as the peer for bench/generate.sh.

    python3 bench/llama_cpp_peer.py --model M.gguf --prompt-file P.txt \
        [--max-tokens 64] [--threads 2] [--runs 3]

Loads the GGUF once, then per run: clears the context, evaluates the prompt
in one batch (timed: prompt processing), then generates --max-tokens tokens
greedily, one llama_decode per token, not stopping at EOS (timed:
generation). Prints one line per run and a summary line that generate.sh
parses:

    llama.cpp: prompt N tokens, median X tokens/s; generation N tokens, median Y tokens/s; peak RSS Z MiB

Exit status 3 when llama_cpp cannot be imported.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-file", required=True)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    try:
        import llama_cpp
        import numpy as np
    except Exception as e:  # noqa: BLE001
        print(f"llama.cpp: llama_cpp not importable: {e}", file=sys.stderr)
        return 3

    with open(args.prompt_file, encoding="utf-8") as f:
        text = f.read()

    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=1024,
        n_batch=512,
        n_ubatch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_gpu_layers=0,
        logits_all=False,
        verbose=False,
    )
    toks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    n_vocab = llm.n_vocab()

    def one_run() -> tuple[float, float, list[int]]:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(toks)
        t_prompt = time.perf_counter() - t0
        out: list[int] = []
        t0 = time.perf_counter()
        for _ in range(args.max_tokens):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
            nxt = int(np.argmax(logits))
            out.append(nxt)
            llm.eval([nxt])
        t_gen = time.perf_counter() - t0
        return t_prompt, t_gen, out

    one_run()  # warm-up: page in the weights, size the buffers
    pp, tg = [], []
    out: list[int] = []
    for r in range(args.runs):
        t_prompt, t_gen, out = one_run()
        pp.append(len(toks) / t_prompt)
        tg.append(len(out) / t_gen)
        print(f"llama.cpp run {r + 1}: prompt {len(toks)} tokens in {t_prompt:.3f} s "
              f"({pp[-1]:.1f} tokens/s), generation {len(out)} tokens in {t_gen:.3f} s "
              f"({tg[-1]:.1f} tokens/s)", file=sys.stderr)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("llama.cpp greedy ids: " + " ".join(map(str, out[:16])), file=sys.stderr)
    txt = llm.detokenize(out).decode("utf-8", errors="replace")
    print(f"llama.cpp greedy text: {txt!r}", file=sys.stderr)
    print(f"llama.cpp: prompt {len(toks)} tokens, median {statistics.median(pp):.1f} tokens/s; "
          f"generation {len(out)} tokens, median {statistics.median(tg):.1f} tokens/s; "
          f"peak RSS {rss_mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
