#!/usr/bin/env python3
"""Writes the small committed fixtures of tests/fixtures/formats/ and checks
files written by our C writers with the reference Python libraries.

    python3 tools/make_format_fixtures.py            # (re)write fixtures
    python3 tools/make_format_fixtures.py --check-st FILE    # used by test_safetensors
    python3 tools/make_format_fixtures.py --check-gguf FILE  # used by test_gguf

Fixtures (deterministic, fixed seed):
  quant_<TYPE>.bin   rows quantized by gguf.quants.quantize (F16, BF16, Q8_0,
                     Q4_0, Q4_1, Q5_0, Q5_1) or random valid blocks (K-quants,
                     which gguf-py cannot quantize), plus gguf-py's
                     dequantization of those blocks (numpy for Q8_K, which
                     gguf-py does not dequantize).
      layout: b"PQF1", u32 ggml_type, u32 n_rows, u32 n_per_row, u32 has_src,
              [f32 src[n_rows*n_per_row] if has_src], block bytes,
              f32 dequant[n_rows*n_per_row]   (all little-endian)
  all_types.gguf     GGUFWriter output: every metadata value type, arrays of
                     strings / ints / floats / arrays, tensors of several types.
  st_basic.safetensors, st_meta.safetensors, st_sharded/, st_single_dir/
                     written by the safetensors library.
Values are formula-based where the C tests recompute them (see the tests).
"""
import json
import os
import struct
import sys

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "formats")


def formula(n):
    """Exactly representable values the C tests recompute: ((i*37) % 101 - 50) / 16."""
    i = np.arange(n, dtype=np.int64)
    return (((i * 37) % 101 - 50) / 16.0).astype(np.float32)


def quant_rows(rng, n_rows, n):
    rows = np.empty((n_rows, n), dtype=np.float32)
    rows[0] = rng.standard_normal(n).astype(np.float32)
    r1 = rng.uniform(-1, 1, n).astype(np.float32)
    r1[:32] = 0.0           # all-zero block: d = 0 path
    r1[32:64] = 0.75        # constant block
    rows[1] = r1
    rows[2] = (rng.standard_normal(n) * 1000).astype(np.float32)
    r3 = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    # a block with exact rounding ties for Q8_0: amax 127 -> d = 1, x + .5 ties
    r3[64:96] = np.array([127.0] + [k + 0.5 for k in range(-15, 16)], dtype=np.float32)
    rows[3] = r3
    return rows


def write_quant_fixtures():
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize, dequantize

    rng = np.random.default_rng(1234)
    n_rows, n = 4, 256
    quantizable = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
    kquants = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"]
    for name in quantizable + kquants:
        qt = T[name]
        blk, tsz = gguf.GGML_QUANT_SIZES[qt]
        if name in quantizable:
            src = quant_rows(rng, n_rows, n)
            q = np.ascontiguousarray(quantize(src, qt)).view(np.uint8).reshape(n_rows, -1)
        else:
            src = None
            q = rng.integers(0, 256, size=(n_rows, n // blk, tsz), dtype=np.uint8)
            # finite f16 (or f32 for Q8_K) scales at the right byte offsets
            def put_f16(off):
                v = (rng.standard_normal((n_rows, n // blk)) * 0.05).astype(np.float16)
                q[:, :, off:off + 2] = v.view(np.uint8).reshape(n_rows, n // blk, 2)
            if name == "Q2_K":
                put_f16(80); put_f16(82)
            elif name == "Q3_K":
                put_f16(108)
            elif name in ("Q4_K", "Q5_K"):
                put_f16(0); put_f16(2)
            elif name == "Q6_K":
                put_f16(208)
            elif name == "Q8_K":
                v = (rng.standard_normal((n_rows, n // blk)) * 0.01).astype(np.float32)
                q[:, :, 0:4] = v.view(np.uint8).reshape(n_rows, n // blk, 4)
            q = q.reshape(n_rows, -1)
        if name == "Q8_K":
            # gguf-py has no Q8_K dequantizer: y = d * q (float32), as ggml does
            b = q.reshape(-1, tsz)
            d = b[:, 0:4].copy().view(np.float32)
            qs = b[:, 4:4 + 256].copy().view(np.int8).astype(np.float32)
            deq = (d * qs).reshape(n_rows, n).astype(np.float32)
        elif name == "BF16":
            deq = dequantize(q.copy(), qt).reshape(n_rows, n).astype(np.float32)
        elif name == "F16":
            deq = q.copy().view(np.float16).astype(np.float32).reshape(n_rows, n)
        else:
            deq = dequantize(q.copy(), qt).reshape(n_rows, n).astype(np.float32)
        with open(os.path.join(OUT, f"quant_{name}.bin"), "wb") as f:
            f.write(b"PQF1" + struct.pack("<IIII", int(qt), n_rows, n, 1 if src is not None else 0))
            if src is not None:
                f.write(src.astype("<f4").tobytes())
            f.write(q.tobytes())
            f.write(deq.astype("<f4").tobytes())


def write_gguf_fixture():
    import gguf
    from gguf import GGMLQuantizationType as T, GGUFValueType as V
    from gguf.quants import quantize

    path = os.path.join(OUT, "all_types.gguf")
    w = gguf.GGUFWriter(path, arch="testarch")
    w.add_key_value("t.u8", 200, V.UINT8)
    w.add_key_value("t.i8", -100, V.INT8)
    w.add_key_value("t.u16", 60000, V.UINT16)
    w.add_key_value("t.i16", -30000, V.INT16)
    w.add_key_value("t.u32", 4000000000, V.UINT32)
    w.add_key_value("t.i32", -2000000000, V.INT32)
    w.add_key_value("t.f32", 0.15625, V.FLOAT32)
    w.add_key_value("t.bool", True, V.BOOL)
    w.add_key_value("t.str", "héllo wörld", V.STRING)
    w.add_key_value("t.u64", 18000000000000000000, V.UINT64)
    w.add_key_value("t.i64", -9000000000000000000, V.INT64)
    w.add_key_value("t.f64", 2.718281828459045, V.FLOAT64)
    w.add_key_value("t.empty_str", "", V.STRING)
    tokens = [f"tok{i}" for i in range(1000)]
    tokens[5] = ""
    tokens[6] = "ünïcödé ✓"
    w.add_array("t.arr_str", tokens)
    w.add_array("t.arr_i32", [1, -2, 3, -4, 5])
    w.add_array("t.arr_f32", [0.5, -1.25, 3.0])
    w.add_array("t.arr_bool", [True, False, True])
    w.add_array("t.arr_arr", [[1, 2, 3], [4, 5]])
    w.add_array("t.arr_arr_str", [["a", "bc"], ["def"]])
    w.add_array("t.arr_arr_arr", [[[7], [8, 9]], [[10]]])

    v = formula(8 * 3).reshape(3, 8)            # ne = [8, 3]
    w.add_tensor("t.f32", v)
    w.add_tensor("t.f16", v.astype(np.float16))
    w.add_tensor("t.bf16", quantize(v, T.BF16), raw_dtype=T.BF16)
    q = formula(64 * 2).reshape(2, 64)          # ne = [64, 2]
    w.add_tensor("t.q8_0", quantize(q, T.Q8_0), raw_dtype=T.Q8_0)
    w.add_tensor("t.q4_0", quantize(q, T.Q4_0), raw_dtype=T.Q4_0)
    w.add_tensor("t.q4_1", quantize(q, T.Q4_1), raw_dtype=T.Q4_1)
    rng = np.random.default_rng(99)
    k = rng.integers(0, 256, size=(1, 144), dtype=np.uint8)
    k[0, 0:2] = np.array([0.01], dtype=np.float16).view(np.uint8)
    k[0, 2:4] = np.array([0.02], dtype=np.float16).view(np.uint8)
    w.add_tensor("t.q4_k", k, raw_dtype=T.Q4_K)  # ne = [256, 1]
    w.add_tensor("t.i32", np.arange(5, dtype=np.int32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_st_fixtures():
    import torch
    from safetensors.torch import save_file

    def f(n, shape, dtype):
        return torch.from_numpy(formula(n)).reshape(shape).to(dtype)

    basic = {
        "a.f32": f(6, (2, 3), torch.float32),
        "b.f16": f(5, (5,), torch.float16),
        "c.bf16": f(4, (2, 2), torch.bfloat16),
        "d.i64": torch.tensor([1, -2, 3], dtype=torch.int64),
        "e.scalar": torch.tensor(2.5, dtype=torch.float32),
        "f.u8": torch.tensor([0, 255, 7], dtype=torch.uint8),
        "g.bool": torch.tensor([True, False], dtype=torch.bool),
        "h.empty": torch.zeros((0, 4), dtype=torch.float32),
        "i.i8": torch.tensor([-128, 127], dtype=torch.int8),
        "j.i16": torch.tensor([-300, 300], dtype=torch.int16),
        "k.i32": torch.tensor([-70000, 70000], dtype=torch.int32),
        "l.f64": torch.tensor([0.1, -0.2], dtype=torch.float64),
    }
    save_file(basic, os.path.join(OUT, "st_basic.safetensors"))
    save_file({"w": f(12, (3, 4), torch.float32)}, os.path.join(OUT, "st_meta.safetensors"),
              metadata={"format": "pt", "note": "hello \"world\"\n"})
    sd = os.path.join(OUT, "st_sharded")
    os.makedirs(sd, exist_ok=True)
    s1 = {"layer.0.w": f(6, (2, 3), torch.float32), "layer.0.b": f(3, (3,), torch.float16)}
    s2 = {"layer.1.w": f(8, (4, 2), torch.bfloat16)}
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    save_file(s1, os.path.join(sd, names[0]), metadata={"format": "pt"})
    save_file(s2, os.path.join(sd, names[1]), metadata={"format": "pt"})
    wm = {k: names[0] for k in s1} | {k: names[1] for k in s2}
    total = sum(t.numel() * t.element_size() for t in (s1 | s2).values())
    with open(os.path.join(sd, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, fh, indent=2)
    od = os.path.join(OUT, "st_single_dir")
    os.makedirs(od, exist_ok=True)
    save_file({"lora_A": f(8, (2, 4), torch.float32)}, os.path.join(od, "adapter_model.safetensors"))


# ---- checks of files our C writers produced ------------------------------------

def check_st(path):
    """Loads a file written by test_safetensors (st_write) with the reference
    library and checks the values the test wrote."""
    import torch
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata()
        assert meta == {"format": "pt", "k": "v \"quoted\"\n\\"}, meta
        keys = list(fh.keys())
        assert sorted(keys) == ["a", "b", "c", "d", "e"], keys
        a, b, c, d, e = (fh.get_tensor(k) for k in "abcde")
    exp = torch.from_numpy(formula(6)).reshape(2, 3)
    assert a.dtype == torch.float32 and torch.equal(a, exp), a
    assert b.dtype == torch.float16 and torch.equal(b, torch.from_numpy(formula(5)).half()), b
    assert c.dtype == torch.bfloat16 and torch.equal(c, torch.from_numpy(formula(4)).reshape(2, 2).bfloat16()), c
    assert d.dtype == torch.int32 and d.tolist() == [7, 8, 9], d
    assert e.shape == (0, 3), e.shape
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        assert n % 8 == 0, n
    print("safetensors check ok")


def check_gguf(path):
    """Reads a file written by test_gguf (gguf_writer) with gguf-py."""
    import gguf
    r = gguf.GGUFReader(path)
    f = r.fields
    assert f["w.u32"].contents() == 7
    assert f["w.i32"].contents() == -7
    assert f["w.u64"].contents() == 1 << 40
    assert abs(f["w.f32"].contents() - 0.5) == 0
    assert f["w.bool"].contents() is True
    assert f["w.str"].contents() == "hi there"
    assert f["w.arr_str"].contents() == ["x", "", "yz"]
    assert f["w.arr_i32"].contents() == [1, 2, 3]
    t = {x.name: x for x in r.tensors}
    assert t["w.f32"].tensor_type == gguf.GGMLQuantizationType.F32
    assert list(t["w.f32"].shape) == [32, 2], t["w.f32"].shape
    assert np.array_equal(np.asarray(t["w.f32"].data).reshape(-1), formula(64))
    assert t["w.q8_0"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    deq = gguf.quants.dequantize(np.asarray(t["w.q8_0"].data), gguf.GGMLQuantizationType.Q8_0).reshape(-1)
    ref = gguf.quants.dequantize(gguf.quants.quantize(formula(64).reshape(2, 32), gguf.GGMLQuantizationType.Q8_0),
                                 gguf.GGMLQuantizationType.Q8_0).reshape(-1)
    assert np.array_equal(deq, ref)
    print("gguf check ok")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check-st":
        check_st(sys.argv[2])
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--check-gguf":
        check_gguf(sys.argv[2])
        return
    os.makedirs(OUT, exist_ok=True)
    write_quant_fixtures()
    write_gguf_fixture()
    write_st_fixtures()
    total = 0
    for root, _, files in os.walk(OUT):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    print(f"wrote fixtures to {os.path.normpath(OUT)} ({total} bytes)")


if __name__ == "__main__":
    main()
