/* data_loader.c — batches over a data_set in a seeded order that is
 * reshuffled every epoch, padded (one example per row) or packed (examples
 * concatenated into full rows).
 *
 * The loader reads one endless stream: epoch 0's order, then epoch 1's, and
 * so on, each a Fisher-Yates permutation drawn from an RNG seeded by (seed,
 * epoch). Batches are consecutive pieces of that stream, so the last batch
 * of an epoch is never short: it continues into the next epoch's order.
 * Because an epoch's order is a pure function of (seed, epoch), the exact
 * position is three numbers (epoch, cursor, offset) and a checkpoint
 * restores the same future batches without storing any permutation.
 *
 * Packing: each row is filled with exactly T tokens. An example that does
 * not fit in what is left of a row is cut, and its remainder starts the next
 * row as a piece of its own: positions restart at 0 there too (the model
 * sees the piece without the text before it), and its segment is a new one.
 * A target is never a token of another example: the last token of each
 * example predicts nothing (-100). The last token of a cut piece still
 * predicts the example's next token, which lies in the next row, so every
 * loss token of the data set is predicted exactly once per epoch. */
#include "train/data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct data_loader {
    const data_set *d;
    int B, T, pad_id;
    bool pack;
    uint64_t seed;
    int epoch, cursor, offset;   /* perm[cursor] is the next example; offset
                                    of its tokens already used (packing) */
    int *perm;
    int64_t total_tokens;
    int32_t *inputs, *targets, *positions, *segments, *labels, *lengths;
    int32_t *types;   /* (rows·T) when some example has token types, else NULL */
    int n_cols;       /* texts per example: rows = B · n_cols */
};

/* Fisher-Yates with an RNG seeded by (seed, epoch). The epoch is mixed in
 * with an odd multiplier before splitmix64 spreads it, so nearby seeds and
 * epochs give unrelated orders. */
static void shuffle(data_loader *l) {
    int n = l->d->n;
    for (int i = 0; i < n; i++) l->perm[i] = i;
    peft_rng r;
    peft_rng_seed(&r, l->seed ^ (0x9E3779B97F4A7C15ULL * ((uint64_t)l->epoch + 1)) ^ ((uint64_t)l->epoch << 32));
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(peft_rng_u64(&r) % (uint64_t)(i + 1));
        int t = l->perm[i];
        l->perm[i] = l->perm[j];
        l->perm[j] = t;
    }
}

static void advance(data_loader *l) {
    l->offset = 0;
    if (++l->cursor == l->d->n) {
        l->cursor = 0;
        l->epoch++;
        shuffle(l);
    }
}

void data_loader_free(data_loader *l) {
    if (!l) return;
    free(l->perm);
    free(l->inputs);
    free(l->targets);
    free(l->positions);
    free(l->segments);
    free(l->labels);
    free(l->lengths);
    free(l->types);
    free(l);
}

int data_loader_new(const data_set *d, int B, int T, bool pack, uint64_t seed, int pad_id, data_loader **out,
                    peft_err *err) {
    *out = NULL;
    if (!d || d->n <= 0) return peft_fail(err, PEFT_ERR_INVALID, "data loader: the data set is empty");
    if (B <= 0 || T <= 0 || (size_t)B * (size_t)T > ((size_t)1 << 31))
        return peft_fail(err, PEFT_ERR_INVALID, "data loader: bad batch shape %d x %d", B, T);
    if (pack && d->kind == DATA_CLASSIFICATION)
        return peft_fail(err, PEFT_ERR_INVALID, "data loader: classification examples cannot be packed");
    for (int i = 0; i < d->n; i++)
        if (d->ex[i].n <= 0) return peft_fail(err, PEFT_ERR_INVALID, "data loader: example %d is empty", i);
    data_loader *l = peft_calloc(1, sizeof *l, err);
    if (!l) return PEFT_ERR_NOMEM;
    l->d = d;
    l->B = B;
    l->T = T;
    l->pack = pack;
    l->seed = seed;
    /* Padding is neither attended to by real tokens (causal, right-padded)
     * nor predicted, but it must still be a valid embedding row. */
    l->pad_id = pad_id >= 0 ? pad_id : 0;
    l->n_cols = data_cols(d);
    if (pack && l->n_cols > 1) {
        free(l);
        return peft_fail(err, PEFT_ERR_INVALID, "data loader: contrastive examples cannot be packed");
    }
    const bool typed = data_has_types(d);
    const int rows = B * l->n_cols;
    size_t bt = (size_t)rows * (size_t)T;
    l->perm = peft_malloc((size_t)d->n * sizeof *l->perm, err);
    l->inputs = peft_malloc(bt * sizeof(int32_t), err);
    l->targets = peft_malloc(bt * sizeof(int32_t), err);
    l->positions = peft_malloc(bt * sizeof(int32_t), err);
    l->segments = peft_malloc(bt * sizeof(int32_t), err);
    l->labels = peft_malloc((size_t)rows * sizeof(int32_t), err);
    l->lengths = peft_malloc((size_t)rows * sizeof(int32_t), err);
    l->types = typed ? peft_malloc(bt * sizeof(int32_t), err) : NULL;
    if (!l->perm || !l->inputs || !l->targets || !l->positions || !l->segments || !l->labels || !l->lengths ||
        (typed && !l->types)) {
        data_loader_free(l);
        return PEFT_ERR_NOMEM;
    }
    for (int i = 0; i < d->n; i++) l->total_tokens += d->ex[i].n;
    shuffle(l);
    *out = l;
    return 0;
}

static void fill_padded(data_loader *l, data_batch *b) {
    int T = l->T;
    bool cls = l->d->kind == DATA_CLASSIFICATION;
    for (int r = 0; r < l->B; r++) {
        const data_example *x = &l->d->ex[l->perm[l->cursor]];
        advance(l);
        int len = PEFT_MIN(x->n, T);
        int32_t *in = l->inputs + (size_t)r * T, *tg = l->targets + (size_t)r * T;
        for (int t = 0; t < T; t++) {
            in[t] = t < len ? x->ids[t] : l->pad_id;
            tg[t] = !cls && t + 1 < len && x->loss[t + 1] ? x->ids[t + 1] : -100;
            l->positions[(size_t)r * T + t] = t;
            l->segments[(size_t)r * T + t] = 0;
            if (l->types) l->types[(size_t)r * T + t] = t < len && x->types ? x->types[t] : 0;
            b->n_targets += tg[t] != -100;
        }
        l->labels[r] = x->label;
        l->lengths[r] = len;
        b->n_targets += cls && x->label >= 0;   /* classification: one target per labelled row */
    }
}

/* Contrastive: text c of the batch's example i in row c·B + i, each padded
 * to T; no targets; anchor i's label is i (its positive's column index). */
static void fill_columns(data_loader *l, data_batch *b) {
    const int T = l->T, B = l->B, C = l->n_cols;
    for (int i = 0; i < B; i++) {
        const data_example *x = &l->d->ex[l->perm[l->cursor]];
        advance(l);
        for (int c = 0; c < C; c++) {
            int n;
            const int32_t *ids = data_example_text(x, c, &n);
            const int r = c * B + i, len = PEFT_MIN(n, T);
            for (int t = 0; t < T; t++) {
                const size_t k = (size_t)r * T + t;
                l->inputs[k] = t < len ? ids[t] : l->pad_id;
                l->targets[k] = -100;
                l->positions[k] = t;
                l->segments[k] = 0;
            }
            l->labels[r] = c == 0 ? i : -1;   /* the anchor's positive: row B + i */
            l->lengths[r] = len;
        }
    }
    b->n_targets = B;   /* one loss term per anchor */
}

static void fill_packed(data_loader *l, data_batch *b) {
    int T = l->T;
    for (int r = 0; r < l->B; r++) {
        int32_t *in = l->inputs + (size_t)r * T, *tg = l->targets + (size_t)r * T;
        int32_t *pos = l->positions + (size_t)r * T, *seg = l->segments + (size_t)r * T;
        int fill = 0, s = 0;
        while (fill < T) {
            const data_example *x = &l->d->ex[l->perm[l->cursor]];
            int off = l->offset, take = PEFT_MIN(x->n - off, T - fill);
            for (int t = 0; t < take; t++) {
                int k = off + t + 1;
                in[fill + t] = x->ids[off + t];
                tg[fill + t] = k < x->n && x->loss[k] ? x->ids[k] : -100;
                pos[fill + t] = t;
                seg[fill + t] = s;
                b->n_targets += tg[fill + t] != -100;
            }
            fill += take;
            s++;
            l->offset += take;
            if (l->offset == x->n) advance(l);
        }
        l->labels[r] = -1;
        l->lengths[r] = T;
    }
}

int data_loader_next(data_loader *l, data_batch *b) {
    memset(b, 0, sizeof *b);
    b->B = l->B;
    b->T = l->T;
    b->pad_id = l->pad_id;
    b->inputs = l->inputs;
    b->targets = l->targets;
    b->positions = l->positions;
    b->segments = l->segments;
    b->labels = l->labels;
    b->lengths = l->lengths;
    b->types = l->types;
    b->n_cols = l->n_cols;
    b->B = l->B * l->n_cols;
    if (l->pack) fill_packed(l, b);
    else if (l->n_cols > 1) fill_columns(l, b);
    else fill_padded(l, b);
    return 0;
}

int data_loader_epoch(const data_loader *l) { return l->epoch; }

int data_loader_batches_per_epoch(const data_loader *l) {
    if (l->pack) {
        int64_t per = (int64_t)l->B * l->T;
        return (int)((l->total_tokens + per - 1) / per);
    }
    return (l->d->n + l->B - 1) / l->B;
}

/* State: nine little-endian u64: magic, then what must match (examples,
 * B, T, pack, seed), then the position (epoch, cursor, offset). */
#define STATE_MAGIC 0x314c44746665ULL /* "peftDL1" */
#define STATE_WORDS 9

size_t data_loader_state_size(const data_loader *l) {
    (void)l;
    return STATE_WORDS * 8;
}

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

void data_loader_get_state(const data_loader *l, void *buf) {
    uint64_t w[STATE_WORDS] = {STATE_MAGIC,      (uint64_t)l->d->n,  (uint64_t)l->B,
                               (uint64_t)l->T,   (uint64_t)l->pack,  l->seed,
                               (uint64_t)l->epoch, (uint64_t)l->cursor, (uint64_t)l->offset};
    for (int i = 0; i < STATE_WORDS; i++) put_u64((uint8_t *)buf + 8 * i, w[i]);
}

/* PEFT_ERR_INVALID when the state is not one of this loader's (another data
 * set, batch shape, mode or seed) or is corrupt; the loader is unchanged. */
int data_loader_set_state(data_loader *l, const void *buf, size_t n) {
    if (n != STATE_WORDS * 8) return PEFT_ERR_INVALID;
    uint64_t w[STATE_WORDS];
    for (int i = 0; i < STATE_WORDS; i++) w[i] = get_u64((const uint8_t *)buf + 8 * i);
    if (w[0] != STATE_MAGIC || w[1] != (uint64_t)l->d->n || w[2] != (uint64_t)l->B || w[3] != (uint64_t)l->T ||
        w[4] != (uint64_t)l->pack || w[5] != l->seed)
        return PEFT_ERR_INVALID;
    if (w[6] > (uint64_t)INT32_MAX || w[7] >= (uint64_t)l->d->n) return PEFT_ERR_INVALID;
    int old_epoch = l->epoch;
    l->epoch = (int)w[6];
    shuffle(l);
    const data_example *x = &l->d->ex[l->perm[w[7]]];
    if (w[8] >= (uint64_t)x->n || (!l->pack && w[8] != 0)) {
        l->epoch = old_epoch;
        shuffle(l);
        return PEFT_ERR_INVALID;
    }
    l->cursor = (int)w[7];
    l->offset = (int)w[8];
    return 0;
}

void data_loader_state_mismatch(const data_loader *l, const void *buf, size_t n, char *out, size_t cap) {
    out[0] = '\0';
    if (n != STATE_WORDS * 8 || get_u64(buf) != STATE_MAGIC) {
        snprintf(out, cap, "its data loader state is not one of this version");
        return;
    }
    uint64_t saved[5];
    for (int i = 0; i < 5; i++) saved[i] = get_u64((const uint8_t *)buf + 8 * (i + 1));
    const uint64_t now[5] = {(uint64_t)l->d->n, (uint64_t)l->B, (uint64_t)l->T, (uint64_t)l->pack, l->seed};
    size_t o = 0;
    for (int i = 0; i < 5 && o < cap; i++) {
        if (saved[i] == now[i]) continue;
        const char *sep = o ? ", " : "it was saved with ";
        if (i == 0)
            o += (size_t)snprintf(out + o, cap - o, "%s%llu examples (now %llu)", sep, (unsigned long long)saved[0],
                                  (unsigned long long)now[0]);
        else if (i == 3)
            o += (size_t)snprintf(out + o, cap - o, "%spacking %s (now %s)", sep, saved[3] ? "on" : "off", now[3] ? "on" : "off");
        else
            o += (size_t)snprintf(out + o, cap - o, "%s%s %llu (now %llu)", sep, i == 1 ? "batch" : i == 2 ? "seq" : "seed",
                                  (unsigned long long)saved[i], (unsigned long long)now[i]);
    }
}
