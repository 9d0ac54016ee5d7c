/* test_methods_ref.c — every method against its reference
 * (tests/fixtures/methods, made by tools/make_method_fixtures.py): HF PEFT
 * for DoRA, IA3, prompt tuning, prefix tuning (with and without the
 * projection) and sequence classification; the fixture script's PyTorch
 * modules for bottleneck adapters, BitFit and full fine-tuning. For each
 * case: the adapter written by the reference loads here, gives its logits,
 * its loss, and every trainable gradient within 1e-4 relative.
 * Decoders: tools/make_method_fixtures.py. Encoders (tiny BERT / RoBERTa
 * classifiers, padded rows and a sentence pair; the *_bert / *_roberta
 * cases): tools/make_encoder_method_fixtures.py, with prefix tuning also
 * the script's own (HF PEFT 0.21.2 refuses prefix tuning on encoders:
 * transformers 5 BERT takes no past_key_values). */
#include "peft/lora.h"
#include "peft/method.h"
#include "test.h"
#include "train/graph.h"

#include <math.h>

#define MFIX "tests/fixtures/models/"
#define XFIX "tests/fixtures/methods/"

typedef struct {
    const char *name, *model;
} rcase;

static const rcase cases[] = {
    {"dora_llama", "tiny-llama"},
    {"dora_gpt2", "tiny-gpt2"},
    {"ia3_llama", "tiny-llama"},
    {"ia3_gpt2", "tiny-gpt2"},
    {"ia3_qwen2", "tiny-qwen2"},
    {"prompt_llama", "tiny-llama"},
    {"prompt_gpt2", "tiny-gpt2"},
    {"prefix_llama", "tiny-llama"},
    {"prefix_gpt2", "tiny-gpt2"},
    {"prefix_proj_llama", "tiny-llama"},
    {"bottleneck_pfeiffer_llama", "tiny-llama"},
    {"bottleneck_houlsby_llama", "tiny-llama"},
    {"bottleneck_pfeiffer_gpt2", "tiny-gpt2"},
    {"bottleneck_houlsby_gpt2", "tiny-gpt2"},
    {"bitfit_gpt2", "tiny-gpt2"},
    {"bitfit_qwen2", "tiny-qwen2"},
    {"full_llama", "tiny-llama"},
    {"seqcls_lora_llama", "tiny-llama"},
    {"seqcls_lora_gpt2", "tiny-gpt2"},
    {"seqcls_prompt_llama", "tiny-llama"},
    {"vera_llama", "tiny-llama"},
    {"vera_gpt2", "tiny-gpt2"},
    {"vera_llama_noproj", "tiny-llama"},
    {"loha_llama", "tiny-llama"},
    {"loha_qwen2", "tiny-qwen2"},
    {"lokr_llama", "tiny-llama"},
    {"lokr_llama_decompose", "tiny-llama"},
    {"lokr_llama_r2", "tiny-llama"},
    {"lokr_qwen2", "tiny-qwen2"},
    /* encoders as sequence classifiers (tools/make_encoder_method_fixtures.py):
     * padded rows, a sentence pair (token types), the BERT / RoBERTa heads */
    {"ia3_bert", "tiny-bert"},
    {"ia3_roberta", "tiny-roberta"},
    {"prompt_bert", "tiny-bert"},
    {"prompt_roberta", "tiny-roberta"},
    {"prefix_bert", "tiny-bert"},
    {"prefix_roberta", "tiny-roberta"},
    {"dora_bert", "tiny-bert"},
    {"loha_bert", "tiny-bert"},
    {"lokr_bert", "tiny-bert"},
    {"bottleneck_houlsby_bert", "tiny-bert"},
    {"bottleneck_pfeiffer_bert", "tiny-bert"},
    {"bitfit_bert", "tiny-bert"},
    {"bitfit_roberta", "tiny-roberta"},
    {"full_bert", "tiny-bert"},
    {"vera_bert", "tiny-bert"},
};

static double rel_diff(const float *a, const float *b, int64_t n) {
    double mr = 0, md = 0;
    for (int64_t k = 0; k < n; k++) {
        mr = fmax(mr, fabs(b[k]));
        md = fmax(md, fabs(a[k] - b[k]));
    }
    return md / (mr > 0 ? mr : 1);
}

/* Builds the adapter the reference trained: its saved folder, or for
 * prefix tuning with a projection the MLP's initial values, or a fresh
 * full fine-tuning copy of the base. */
static adapter *reference_adapter(const rcase *c, peft_model *m, const st_archive *ref, peft_err *err) {
    adapter *a = NULL;
    char dir[512];
    snprintf(dir, sizeof dir, XFIX "%s/adapter", c->name);
    if (!strncmp(c->name, "full_", 5)) {
        method_config mc;
        memset(&mc, 0, sizeof mc);
        mc.ops = method_find("full");
        /* a classifier: the head starts as the base's own */
        const st_tensor *cls = st_find(ref, "cls_labels");
        mc.n_labels = cls ? m->n_labels : 0;
        return adapter_new(m, &mc, &a, err) ? NULL : a;
    }
    if (!strcmp(c->name, "prefix_proj_llama")) {
        method_config mc;
        memset(&mc, 0, sizeof mc);
        mc.ops = method_find("prefix");
        snprintf(mc.options, sizeof mc.options, "num_virtual_tokens=4;prefix_projection=true;encoder_hidden_size=32");
        if (adapter_new(m, &mc, &a, err)) return NULL;
        for (int i = 0; i < a->n_tensors; i++) {
            if (a->tensors[i].frozen) continue;   /* the projected table: computed by refresh */
            char key[256];
            snprintf(key, sizeof key, "init.%s", a->tensors[i].key);
            const st_tensor *t = st_find(ref, key);
            CHECK_MSG(t && st_numel(t) == a->tensors[i].n, "reference lacks %s", key);
            if (t && st_numel(t) == a->tensors[i].n) memcpy(a->tensors[i].p, t->data, sizeof(float) * (size_t)a->tensors[i].n);
        }
        adapter_refresh(a, m, err);
        return a;
    }
    return adapter_load(m, dir, &a, err) ? NULL : a;
}

static void one_case(const rcase *c) {
    char p[512];
    snprintf(p, sizeof p, XFIX "%s/reference.safetensors", c->name);
    peft_err err = {0};
    st_archive *ref = NULL;
    CHECK_OK(st_open(p, &ref, &err));
    if (!ref) return;
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 2;
    peft_ctx *ctx = peft_init(&cp);
    snprintf(p, sizeof p, MFIX "%s", c->model);
    peft_model *m = peft_model_load(ctx, p);
    CHECK(m != NULL);
    adapter *a = m ? reference_adapter(c, m, ref, &err) : NULL;
    CHECK_MSG(a != NULL, "%s: %s", c->name, err.msg);
    const st_tensor *ids_t = st_find(ref, "input_ids"), *lab_t = st_find(ref, "labels"), *loss_t = st_find(ref, "loss");
    const st_tensor *cls_t = st_find(ref, "cls_labels"), *mask_t = st_find(ref, "attention_mask"), *lg_t = st_find(ref, "logits");
    const st_tensor *types_t = st_find(ref, "token_type_ids");
    /* a fixture without what is compared must fail, not pass unchecked */
    CHECK_MSG(ids_t && loss_t && lg_t, "%s: reference lacks input_ids, loss or logits", c->name);
    if (!m || !a || !ids_t || !loss_t || !lg_t) goto out;
    const int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1], V = m->cfg.vocab;
    const int32_t *ids = ids_t->data;
    static int32_t buf[7][256];
    data_batch b = {B, T, buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], 0, 0, NULL, NULL, 0};
    for (int r = 0; r < B; r++) {
        int len = T;
        if (mask_t) {
            len = 0;
            for (int t = 0; t < T; t++) len += ((const int32_t *)mask_t->data)[r * T + t] != 0;
        }
        b.lengths[r] = len;
        b.labels[r] = cls_t ? ((const int32_t *)cls_t->data)[r] : -1;
        buf[6][r] = lab_t ? ((const int32_t *)lab_t->data)[r * T] : -100;
        for (int t = 0; t < T; t++) {
            const int i = r * T + t;
            b.inputs[i] = ids[i];
            b.positions[i] = t;
            b.segments[i] = 0;
            b.targets[i] = lab_t && t + 1 < T ? ((const int32_t *)lab_t->data)[i + 1] : -100;
            b.n_targets += b.targets[i] != -100;
        }
    }
    if (cls_t) b.n_targets = B;
    /* prompt tuning: the last virtual token predicts labels[:, 0] (HF PEFT
     * prepends -100 labels for the virtual tokens, then shifts) */
    if (adapter_prompt_rows(a) > 0 && lab_t) {
        b.first_targets = buf[6];
        for (int r = 0; r < B; r++) b.n_targets += buf[6][r] != -100;
    }
    train_graph *g = NULL;
    CHECK_OK(tg_new(m, a, B, T, &g, &err));
    if (!g) { fprintf(stderr, "  %s\n", err.msg); goto out; }
    memset(a->grads, 0, sizeof(float) * (size_t)a->n_params);
    if (types_t) tg_set_types(g, types_t->data);   /* BERT: a sentence pair's second text has type 1 */
    double ls = 0;
    int n = 0;
    CHECK_OK(tg_run(g, &b, true, 1.0f / (float)b.n_targets, 0, &ls, &n, &err));
    const double want = ((const float *)loss_t->data)[0], got = ls / n;
    CHECK_MSG(fabs(got - want) <= 1e-5 * fabs(want), "%s: loss %.7f vs reference %.7f", c->name, got, want);

    /* logits: classification from the graph, causal LM from the inference forward */
    double lrel = 0;
    if (cls_t) {
        lrel = rel_diff(tg_class_logits(g), lg_t->data, st_numel(lg_t));
    } else {
        const int P = adapter_prompt_rows(a), TT = (int)lg_t->shape[1];
        float *lg = malloc(sizeof(float) * (size_t)T * V);
        model_state st;
        model_state_init(&st, a);
        for (int r = 0; r < B && lg; r++) {
            model_state_reset(&st);
            CHECK_OK(model_forward(m, &st, ids + r * T, T, lg, true, &err));
            const float *want_l = (const float *)lg_t->data + ((size_t)r * TT + (TT - T)) * V;
            lrel = fmax(lrel, rel_diff(lg, want_l, (int64_t)T * V));
        }
        (void)P;
        model_state_free(&st);
        free(lg);
    }
    CHECK_MSG(lrel <= 1e-4, "%s: logits differ by %.3g (relative to the largest)", c->name, lrel);

    /* every trainable gradient. A gradient that is zero in exact arithmetic
     * is compared to the case's largest instead of to itself: an encoder's
     * key bias (bitfit_*, full_bert) adds q·b_k to every score of a query
     * alike, which the softmax cancels (no RoPE rotates it per position, no
     * prefix key lacks it), so both sides hold rounding noise (reference
     * ≤ 1.1e-8 against gradients up to 0.28) */
    double worst = 0, scale = 0;
    int checked = 0, trainable = 0, zero = 0;
    for (int i = 0; i < a->n_tensors; i++) {
        char key[256];
        snprintf(key, sizeof key, "%s.grad", a->tensors[i].key);
        const st_tensor *t = st_find(ref, key);
        for (int64_t k = 0; t && k < st_numel(t); k++) scale = fmax(scale, fabs(((const float *)t->data)[k]));
    }
    for (int i = 0; i < a->n_tensors; i++) {
        if (a->tensors[i].frozen) continue;   /* a buffer (VeRA's shared matrices): no gradient */
        trainable++;
        char key[256];
        snprintf(key, sizeof key, "%s.grad", a->tensors[i].key);
        const st_tensor *t = st_find(ref, key);
        CHECK_MSG(t != NULL, "%s: no reference gradient %s", c->name, key);
        if (!t) continue;
        CHECK_EQ_INT((int)st_numel(t), (int)a->tensors[i].n);
        if (st_numel(t) != a->tensors[i].n) continue;
        checked++;
        double tmax = 0, gmax = 0;
        for (int64_t k = 0; k < a->tensors[i].n; k++) {
            tmax = fmax(tmax, fabs(((const float *)t->data)[k]));
            gmax = fmax(gmax, fabs(a->tensors[i].g[k]));
        }
        if (tmax <= 1e-6 * scale) {
            CHECK_MSG(gmax <= 1e-6 * scale, "%s: %s is %.3g, the reference's is zero (%.3g; largest gradient %.3g)",
                      c->name, key, gmax, tmax, scale);
            zero++;
            continue;
        }
        double r = rel_diff(a->tensors[i].g, t->data, a->tensors[i].n);
        CHECK_MSG(r <= 1e-4, "%s: %s differs by %.3g", c->name, key, r);
        worst = fmax(worst, r);
    }
    CHECK_MSG(checked == trainable && checked > 0, "%s: %d of %d trainable tensors compared", c->name, checked,
              trainable);
    printf("    %-26s loss %.6f (ref %.6f)  logits %.2g  %2d gradients, worst %.2g", c->name, got, want, lrel, checked, worst);
    if (zero) printf(" (%d zero)", zero);
    printf("\n");
    tg_free(g);
out:
    adapter_free(a);
    peft_model_free(m);
    peft_free(ctx);
    st_close(ref);
}

static void every_method_matches_its_reference(void) {
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) one_case(&cases[i]);
}

int main(void) {
    TEST_RUN(every_method_matches_its_reference);
    TEST_MAIN_END();
}
