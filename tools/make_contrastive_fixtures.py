"""Contrastive fine-tuning reference: sentence-transformers' MultipleNegativesRankingLoss
(scale 20, cos_sim, in-batch negatives plus a hard-negative column) over a SentenceTransformer
made of the tiny BERT fixture (models.Transformer -> mean Pooling), with an HF peft LoRA
(FEATURE_EXTRACTION on the bare BertModel, query/value, r=2, alpha=4, A and B drawn
non-zero) on its encoder. Dropout off (eval mode), float32.

Writes tests/fixtures/lora/bert_qv_mnrl/:
  adapter/                    the peft adapter as save_pretrained writes it (keys without "bert.")
  reference.safetensors       anchor/positive/negative input_ids + attention_mask (int32, each
                              column padded on its own), loss (the mean over anchors), scores
                              (anchors x candidates, scale * cos) and every LoRA gradient as
                              "<peft key>.grad" under the task model's names
                              (base_model.model.bert....), which is how peft.c names them.
Run from the repository root: python3 tools/make_contrastive_fixtures.py
"""
import fixture_common  # noqa: F401  (hermetic: hash seed, offline)
from fixture_common import INIT_SCALE, MODELS_REL, ROOT, clean_dir, save_peft_adapter

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer, models
from sentence_transformers.losses import MultipleNegativesRankingLoss

ANCHORS = ["A man is playing a guitar.", "A woman slices an onion.", "The cat sleeps on the sofa."]
POSITIVES = ["Someone plays music.", "A person cuts a vegetable in the kitchen.", "A pet is resting."]
NEGATIVES = ["A man is eating pasta.", "The woman is driving a car", "Dogs bark loudly at night outside."]


def main():
    torch.manual_seed(0)
    tr = models.Transformer(f"{MODELS_REL}/tiny-bert", max_seq_length=32)
    pool = models.Pooling(tr.get_word_embedding_dimension(), pooling_mode="mean")
    st = SentenceTransformer(modules=[tr, pool], device="cpu")
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], lora_dropout=0.0,
                     task_type="FEATURE_EXTRACTION")
    # peft injects the LoRA layers into the BertModel in place: the SentenceTransformer runs them
    pm = get_peft_model(tr.auto_model, cfg)
    gen = torch.Generator().manual_seed(116)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * INIT_SCALE)
    st.eval()
    loss_fn = MultipleNegativesRankingLoss(st, scale=20.0)
    feats = [st.tokenize(t) for t in (ANCHORS, POSITIVES, NEGATIVES)]
    loss = loss_fn(feats, labels=None)
    loss.backward()
    with torch.no_grad():
        embs = [st(dict(f))["sentence_embedding"] for f in feats]
        a = torch.nn.functional.normalize(embs[0], dim=1)
        c = torch.nn.functional.normalize(torch.cat(embs[1:]), dim=1)
        scores = 20.0 * a @ c.T
    out = {}
    for k, f in zip(("anchor", "positive", "negative"), feats):
        out[f"{k}_input_ids"] = f["input_ids"].to(torch.int32).contiguous()
        out[f"{k}_attention_mask"] = f["attention_mask"].to(torch.int32).contiguous()
    out["loss"] = loss.detach().reshape(1).float()
    out["scores"] = scores.float().contiguous()
    for n, p in pm.named_parameters():
        if "lora_" in n:
            key = n.replace(".default", "").replace("base_model.model.", "base_model.model.bert.", 1)
            out[key + ".grad"] = p.grad.detach().float().contiguous()
    d = ROOT / "tests/fixtures/lora/bert_qv_mnrl"
    clean_dir(d)
    save_peft_adapter(pm, d / "adapter")
    save_file(out, str(d / "reference.safetensors"))
    print(d, "loss", float(loss))


if __name__ == "__main__":
    main()
