#!/usr/bin/env python3
"""Writes tests/fixtures/data/: small JSONL datasets and the token ids and
loss masks Hugging Face transformers gives for them with the tiny-llama
fixture tokenizer (byte-level BPE, ChatML), for tests/test_data.c.

Run from the repository root:
    python3 tools/make_data_fixtures.py

Inputs:  tests/fixtures/models/tiny-llama/tokenizer.json
Outputs (committed):
  chat.jsonl / chat_expected.json
      {"messages": [...]} rows; expected: one {"ids", "loss"} per row, from
      apply_chat_template(..., return_assistant_tokens_mask=True) with the
      fixture's ChatML template marked up with {% generation %} around each
      assistant message's content and its <|im_end|> (the span TRL's
      assistant_only_loss trains on). The tokenizer's own template has no
      generation markers, so the marked copy is given explicitly; the text it
      renders is checked to equal the unmarked template's.
  pc.jsonl / pc_expected.json
      {"prompt", "completion"} rows; expected as TRL's SFTTrainer builds
      them: tokenizer(prompt) + tokenizer(completion, no specials) + [EOS],
      loss on the completion and the EOS.
"""
import json
import os

from transformers import PreTrainedTokenizerFast

TOK_DIR = "tests/fixtures/models/tiny-llama"
OUT = "tests/fixtures/data"

MARKED = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CHATS = [
    [{"role": "user", "content": "Hello there"},
     {"role": "assistant", "content": "Hi! How can I help?"},
     {"role": "user", "content": "Say a word."},
     {"role": "assistant", "content": "Word."}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": " 4 \n"}],
    [{"role": "user", "content": "caf\u00e9 na\u00efve \u2014 ok"},
     {"role": "assistant", "content": "d\u00e9j\u00e0 vu <|im_end|> inside"},
     {"role": "user", "content": "and?"},
     {"role": "assistant", "content": ""}],
]

PCS = [
    {"prompt": "name[Alimentum], area[city centre]", "completion": " Alimentum is in the city centre."},
    {"prompt": "Q: hello", "completion": "world"},
    {"prompt": "", "completion": "only completion"},
    {"prompt": "ends with space ", "completion": " and starts with one"},
]


def main():
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(TOK_DIR, "tokenizer.json"))
    cfg = json.load(open(os.path.join(TOK_DIR, "tokenizer_config.json")))
    eos = tok.convert_tokens_to_ids(cfg["eos_token"])
    os.makedirs(OUT, exist_ok=True)

    rows = []
    for msgs in CHATS:
        plain = tok.apply_chat_template(msgs, chat_template=cfg["chat_template"], tokenize=False)
        marked = tok.apply_chat_template(msgs, chat_template=MARKED, tokenize=False)
        assert plain == marked, (plain, marked)
        enc = tok.apply_chat_template(msgs, chat_template=MARKED, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        ids = list(enc["input_ids"])
        assert ids == tok(plain, add_special_tokens=False)["input_ids"]
        rows.append({"ids": ids, "loss": [int(x) for x in enc["assistant_masks"]]})
    with open(os.path.join(OUT, "chat.jsonl"), "w", encoding="utf-8") as f:
        for msgs in CHATS:
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
    with open(os.path.join(OUT, "chat_expected.json"), "w") as f:
        json.dump(rows, f)

    rows = []
    for r in PCS:
        p = tok(r["prompt"])["input_ids"]
        c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [eos]
        rows.append({"ids": p + c, "loss": [0] * len(p) + [1] * len(c)})
    with open(os.path.join(OUT, "pc.jsonl"), "w", encoding="utf-8") as f:
        for r in PCS:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with open(os.path.join(OUT, "pc_expected.json"), "w") as f:
        json.dump(rows, f)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
