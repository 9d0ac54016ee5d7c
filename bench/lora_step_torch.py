#!/usr/bin/env python3
"""bench/lora_step_torch.py — the PyTorch + HF peft side of bench/lora_step.sh.

    lora_step_torch.py make {gpt2|smollm2|1b|8b} DIR
        Writes a random-weight (torch seed 0) float32 model of that shape to
        DIR with save_pretrained (safetensors): GPT-2-124M (n_embd 768, 12
        layers, 12 heads, vocab 50257, n_positions 1024, dropouts 0) or
        SmolLM2-135M (LlamaConfig hidden 576, 30 layers, 9 heads, 3 kv heads,
        intermediate 1536, vocab 49152, tied embeddings, rope_theta 100000);
        1b and 8b: the shapes of bench/make_llama_gguf.py (hidden 2048, 16
        layers, 32/8 heads, intermediate 8192; hidden 4096, 32 layers, 32/8
        heads, intermediate 14336), otherwise as SmolLM2 (bench/scale.sh).
        Without torch/transformers it writes the same shapes and tensor names
        with numpy N(0, 0.02) weights instead (only the C side can then run).

    lora_step_torch.py run DIR [--batch 4] [--seq 256] [--steps 5]
                               [--warmup 1] [--threads 2] [--targets LIST]
        One LoRA training step repeated: AutoModelForCausalLM (float32),
        get_peft_model(LoraConfig(r=8, lora_alpha=16, lora_dropout=0,
        target_modules = q_proj,v_proj or c_attn, or --targets: a comma list
        or all-linear)), AdamW (lr 1e-4) over the
        trainable parameters; per step: forward with labels (causal-LM loss),
        loss.backward(), clip_grad_norm_(1.0), optimizer.step(),
        optimizer.zero_grad(). Inputs are the same pseudo-random ids as
        bench/lora_step.c (a 64-bit LCG), so the first loss must agree.
        Prints one line:
            RESULT impl=torch model=... B=.. T=.. steps=.. median_s=..
                   min_s=.. tokens_per_s=.. peak_rss_mib=.. loss0=..
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time


GPT2_CFG = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_embd=768, n_layer=12,
                n_head=12, vocab_size=50257, n_positions=1024, n_inner=None,
                activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0,
                embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=50256,
                eos_token_id=50256, dtype="float32")
LLAMA_CFG = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=576,
                 num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 head_dim=64, intermediate_size=1536, vocab_size=49152, hidden_act="silu",
                 tie_word_embeddings=True, rope_theta=100000.0, max_position_embeddings=8192,
                 rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, dtype="float32")


# hidden, layers, heads, kv heads, intermediate (bench/make_llama_gguf.py's shapes)
LLAMA_SHAPES = {"smollm2": (576, 30, 9, 3, 1536), "1b": (2048, 16, 32, 8, 8192), "8b": (4096, 32, 32, 8, 14336)}


def make_numpy(kind, out):
    """Without torch/transformers: the same shapes and HF tensor names,
    N(0, 0.02) weights from numpy (seed 0), written as safetensors by hand."""
    import numpy as np

    rng = np.random.default_rng(0)
    t = {}

    def w(name, *shape, std=0.02):
        t[name] = (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)

    def const(name, n, v):
        t[name] = np.full((n,), v, dtype=np.float32)

    if kind == "gpt2":
        c = GPT2_CFG
        d, ff = c["n_embd"], 4 * c["n_embd"]
        w("transformer.wte.weight", c["vocab_size"], d)
        w("transformer.wpe.weight", c["n_positions"], d, std=0.01)
        for i in range(c["n_layer"]):
            p = f"transformer.h.{i}."
            for ln in ("ln_1", "ln_2"):
                const(p + ln + ".weight", d, 1.0)
                const(p + ln + ".bias", d, 0.0)
            for name, shape in (("attn.c_attn", (d, 3 * d)), ("attn.c_proj", (d, d)),
                                ("mlp.c_fc", (d, ff)), ("mlp.c_proj", (ff, d))):
                w(p + name + ".weight", *shape)  # Conv1D: (in, out)
                const(p + name + ".bias", shape[1], 0.0)
        const("transformer.ln_f.weight", d, 1.0)
        const("transformer.ln_f.bias", d, 0.0)
    else:
        c = dict(LLAMA_CFG)
        c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"], \
            c["intermediate_size"] = LLAMA_SHAPES[kind]
        c["head_dim"] = c["hidden_size"] // c["num_attention_heads"]
        d, ff, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
        qd, kvd = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
        w("model.embed_tokens.weight", c["vocab_size"], d)
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            const(p + "input_layernorm.weight", d, 1.0)
            const(p + "post_attention_layernorm.weight", d, 1.0)
            for name, shape in (("self_attn.q_proj", (qd, d)), ("self_attn.k_proj", (kvd, d)),
                                ("self_attn.v_proj", (kvd, d)), ("self_attn.o_proj", (d, qd)),
                                ("mlp.gate_proj", (ff, d)), ("mlp.up_proj", (ff, d)),
                                ("mlp.down_proj", (d, ff))):
                w(p + name + ".weight", *shape)
        const("model.norm.weight", d, 1.0)
    os.makedirs(out, exist_ok=True)
    header, off = {"__metadata__": {"format": "pt"}}, 0
    names = sorted(t)
    for k in names:
        n = t[k].nbytes
        header[k] = {"dtype": "F32", "shape": list(t[k].shape), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for k in names:
            f.write(np.ascontiguousarray(t[k]).tobytes())
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    n = sum(a.size for a in t.values())
    print(f"made {kind} in {out} with numpy (no torch/transformers): {n / 1e6:.1f}M params")


def make(kind, out):
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        return make_numpy(kind, out)
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    elif kind in LLAMA_SHAPES:
        d, n_layer, heads, kv, ff = LLAMA_SHAPES[kind]
        cfg = LlamaConfig(hidden_size=d, num_hidden_layers=n_layer, num_attention_heads=heads,
                          num_key_value_heads=kv, intermediate_size=ff, vocab_size=49152,
                          tie_word_embeddings=True, rope_theta=100000.0,
                          max_position_embeddings=8192, rms_norm_eps=1e-5,
                          bos_token_id=1, eos_token_id=2)
    else:
        sys.exit(f"lora_step_torch.py: unknown model kind {kind}")
    model = AutoModelForCausalLM.from_config(cfg).float()
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    # confirm the config the C loader will read
    with open(os.path.join(out, "config.json")) as f:
        c = json.load(f)
    n = sum(p.numel() for p in model.parameters())
    print(f"made {kind} in {out}: {n / 1e6:.1f}M params, model_type {c.get('model_type')}")


def lcg_ids(n, vocab):
    """Same generator as bench/lora_step.c: x = x*6364136223846793005 +
    1442695040888963407 (mod 2^64), id = (x >> 33) % vocab, x0 = 0x5EED."""
    x = 0x5EED
    out = []
    m = (1 << 64) - 1
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & m
        out.append((x >> 33) % vocab)
    return out


def run(args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # f32: everything float32. bf16: the frozen base stored in bfloat16 and
    # the step under CPU autocast to bfloat16 (oneDNN bf16 GEMMs, AMX where
    # the CPU has it); the LoRA weights and optimizer stay float32, as peft
    # keeps adapters (autocast_adapter_dtype).
    wdt = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.dir, dtype=wdt)
    mt = model.config.model_type
    targets = ["c_attn"] if mt == "gpt2" else ["q_proj", "v_proj"]
    if args.targets:
        targets = args.targets if args.targets == "all-linear" else args.targets.split(",")
    lcfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets,
                      task_type="CAUSAL_LM")
    if args.checkpoint_layers > 0:
        # HF checkpoints every decoder layer (no coarser granularity); the
        # non-reentrant variant needs no input gradient on the frozen embeddings
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, lcfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

    B, T = args.batch, args.seq
    ids = torch.tensor(lcg_ids(B * T, model.config.vocab_size), dtype=torch.long).view(B, T)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    times = []
    loss0 = None
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = step()
        dt = time.perf_counter() - t0
        if loss0 is None:
            loss0 = loss
        if i >= args.warmup:
            times.append(dt)
        print(f"torch {mt} step {i}{' (warmup)' if i < args.warmup else ''}: {dt:.3f} s loss {loss:.5f}",
              file=sys.stderr, flush=True)
    med = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    attn = getattr(model.config, "_attn_implementation", "?")
    print(f"RESULT impl=torch dtype={args.dtype} model={mt} B={B} T={T} steps={args.steps} median_s={med:.4f} "
          f"min_s={min(times):.4f} tokens_per_s={B * T / med:.1f} peak_rss_mib={rss:.1f} "
          f"loss0={loss0:.5f} trainable={n_train} attn={attn} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} checkpoint_layers={1 if args.checkpoint_layers > 0 else 0}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make")
    mk.add_argument("kind", choices=["gpt2", "smollm2", "1b", "8b"])
    mk.add_argument("dir")
    mk.add_argument("--numpy", action="store_true", help="use the numpy writer even with torch")
    rn = sub.add_parser("run")
    rn.add_argument("dir")
    rn.add_argument("--batch", type=int, default=4)
    rn.add_argument("--seq", type=int, default=256)
    rn.add_argument("--steps", type=int, default=5)
    rn.add_argument("--warmup", type=int, default=1)
    rn.add_argument("--threads", type=int, default=2)
    rn.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    rn.add_argument("--targets", default=None, help="LoRA target modules: a comma list or all-linear")
    rn.add_argument("--checkpoint-layers", type=int, default=0,
                    help="> 0: gradient checkpointing (HF's, every layer)")
    a = ap.parse_args()
    if a.cmd == "make":
        (make_numpy if a.numpy else make)(a.kind, a.dir)
    else:
        run(a)


if __name__ == "__main__":
    main()
