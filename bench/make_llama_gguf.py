"""Random-weight Llama-shaped GGUF models for speed and memory benchmarks (never committed).

    python3 bench/make_llama_gguf.py SHAPE OUT.gguf [--type q4_0|q8_0|f32] [--seed 0]

SHAPE: smollm2 (SmolLM2-135M: d 576, 30 layers, ff 1536, 9/3 heads), 1b (d 2048, 16
layers, ff 8192, 32/8 heads), 8b (Llama-3-8B: d 4096, 32 layers, ff 14336, 32/8 heads).
Vocabulary 49152 with SmolLM2's tokenizer (copied from models/SmolLM2-135M-Instruct.Q4_1.gguf,
which `bash scripts/setup.sh --model` fetches), so `peft train` runs on real text. Linears and
the token embedding (tied head) in --type, norms f32; weights N(0, 0.02) (Q4_0: random blocks
of about that spread), norms 1. GGUFWriter keeps the tensors until it writes them: the 8B Q4_0
file needs about its size (4.4 GB) in memory, and a minute or two.
"""
import argparse
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf import quants

SHAPES = {
    "smollm2": dict(d=576, n_layer=30, ff=1536, heads=9, kv=3),
    "1b": dict(d=2048, n_layer=16, ff=8192, heads=32, kv=8),
    "8b": dict(d=4096, n_layer=32, ff=14336, heads=32, kv=8),
}
TYPES = {"q4_0": GGMLQuantizationType.Q4_0, "q8_0": GGMLQuantizationType.Q8_0, "f32": GGMLQuantizationType.F32}
TOKENIZER = "models/SmolLM2-135M-Instruct.Q4_1.gguf"


def copy_tokenizer(w: GGUFWriter, path: str) -> int:
    r = GGUFReader(path)
    n_vocab = 0
    for k, f in r.fields.items():
        if not k.startswith("tokenizer."):
            continue
        t = f.types[0]
        if t == GGUFValueType.ARRAY:
            sub = f.types[1]
            if sub == GGUFValueType.STRING:
                vals = [bytes(f.parts[i]).decode("utf-8", errors="surrogateescape") for i in f.data]
            else:
                vals = [int(f.parts[i][0]) for i in f.data]
            w.add_array(k, vals)
            if k == "tokenizer.ggml.tokens":
                n_vocab = len(vals)
        elif t == GGUFValueType.STRING:
            w.add_string(k, bytes(f.parts[f.data[0]]).decode("utf-8"))
        elif t == GGUFValueType.BOOL:
            w.add_bool(k, bool(f.parts[f.data[0]][0]))
        else:
            w.add_uint32(k, int(f.parts[f.data[0]][0]))
    return n_vocab


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out")
    ap.add_argument("--type", choices=sorted(TYPES), default="q4_0")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    s = SHAPES[a.shape]
    qt = TYPES[a.type]
    rng = np.random.default_rng(a.seed)
    w = GGUFWriter(a.out, "llama")
    w.add_name(f"random-llama-{a.shape}-{a.type}")
    vocab = copy_tokenizer(w, TOKENIZER)
    d, hd = s["d"], s["d"] // s["heads"]
    w.add_block_count(s["n_layer"])
    w.add_context_length(8192)
    w.add_embedding_length(d)
    w.add_feed_forward_length(s["ff"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv"])
    w.add_rope_freq_base(100000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(hd)

    def lin(name, rows, cols, t=qt):
        if t == GGMLQuantizationType.Q4_0:
            # Q4_0 blocks drawn directly (a scale, 32 random 4-bit codes): weights uniform on
            # [-8, 7]·0.006 (std ≈ 0.028), and fast enough for an 8B file (numpy's quantizer
            # takes about a minute per layer there)
            nb = cols // 32
            blocks = np.empty((rows, nb, 18), dtype=np.uint8)
            blocks[:, :, 0:2] = np.frombuffer(np.float16(0.006).tobytes(), dtype=np.uint8)
            blocks[:, :, 2:] = rng.integers(0, 256, size=(rows, nb, 16), dtype=np.uint8)
            w.add_tensor(name, blocks.reshape(rows, nb * 18), raw_dtype=t)
            return
        x = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float32)
        if t == GGMLQuantizationType.F32:
            w.add_tensor(name, x)
        else:
            w.add_tensor(name, quants.quantize(x, t), raw_dtype=t)

    lin("token_embd.weight", vocab, d)
    w.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    kvd = s["kv"] * hd
    for l in range(s["n_layer"]):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", np.ones(d, dtype=np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(d, dtype=np.float32))
        lin(p + "attn_q.weight", d, d)
        lin(p + "attn_k.weight", kvd, d)
        lin(p + "attn_v.weight", kvd, d)
        lin(p + "attn_output.weight", d, d)
        lin(p + "ffn_gate.weight", s["ff"], d)
        lin(p + "ffn_up.weight", s["ff"], d)
        lin(p + "ffn_down.weight", d, s["ff"])
        print(f"\rlayer {l + 1}/{s['n_layer']}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
