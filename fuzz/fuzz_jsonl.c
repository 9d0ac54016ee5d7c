/* fuzz_jsonl.c — training data: data_load_jsonl over every kind of row
 * (text, prompt/completion, messages, text+label; Alpaca and ShareGPT rows
 * in the corpus), a validation split and
 * batches from the loader (padded or packed), with its state saved and
 * restored. Byte 0 holds the options: bit 0 the tokenizer (tiny-llama's
 * ChatML one, or tiny-gpt2's without a chat template), bit 1 packing, bit 2
 * skip_bad, bit 3 add_eos off, bits 4-5 seq_len (8, 16, 64, none); the
 * rest is the JSONL file. */
#include "fuzz.h"
#include "train/data.h"

#include <stdio.h>
#include <stdlib.h>

int fuzz_jsonl_one(const uint8_t *data, size_t size) {
    static bpe_tokenizer *toks[2];
    static const char *paths[2] = {"models/tiny-llama/tokenizer.json", "models/tiny-gpt2/tokenizer.json"};
    if (size < 1 || !fuzz_dir()) return 0;
    uint8_t o = data[0];
    int which = o & 1;
    peft_err err = {0};
    if (!toks[which] && bpe_load_json(fuzz_fixture(paths[which]), &toks[which], &err) != 0) {
        fprintf(stderr, "fuzz_jsonl: %s\n", err.msg);
        return -1;
    }
    if (fuzz_write("data.jsonl", data + 1, size - 1) != 0) return 0;
    data_params p = data_default_params();
    static const int seqs[4] = {8, 16, 64, 0};
    p.seq_len = seqs[(o >> 4) & 3];
    p.skip_bad = (o >> 2) & 1;
    p.add_eos = !((o >> 3) & 1);
    bool pack = (o >> 1) & 1;
    data_set d;
    if (data_load_jsonl(fuzz_path("data.jsonl"), toks[which], &p, &d, &err) != 0) return fuzz_err_msg(&err);
    int bad = 0;
    data_set val;
    int split = 0;
    if (d.n > 1) {
        peft_err e2 = {0};
        if (data_split(&d, 0.25, 7, &val, &e2) == 0) split = 1;
        else bad |= fuzz_err_msg(&e2);
    }
    data_loader *l = NULL;
    peft_err e3 = {0};
    int T = p.seq_len > 0 ? p.seq_len : 32;
    if (data_loader_new(&d, 2, T, pack, 11, bpe_pad_id(toks[which]), &l, &e3) == 0) {
        volatile int64_t sum = data_loader_batches_per_epoch(l);
        size_t ss = data_loader_state_size(l);
        void *state = malloc(ss ? ss : 1);
        if (state) data_loader_get_state(l, state);
        data_batch b;
        for (int i = 0; i < 4; i++) {
            if (data_loader_next(l, &b) != 0) break;
            for (int k = 0; k < b.B * b.T; k++) sum += b.inputs[k] + b.targets[k] + b.positions[k] + b.segments[k];
            for (int k = 0; k < b.B; k++) sum += b.lengths[k] + (b.labels ? b.labels[k] : 0);
            sum += b.n_targets;
        }
        if (state) {
            if (data_loader_set_state(l, state, ss) != 0) bad = -1;   /* its own state must be accepted */
            free(state);
        }
        sum += data_loader_epoch(l);
        (void)sum;
        data_loader_free(l);
    } else {
        bad |= fuzz_err_msg(&e3);
    }
    if (split) data_free(&val);
    data_free(&d);
    return bad < 0 ? -1 : 1;
}

FUZZ_MAIN(fuzz_jsonl_one)
