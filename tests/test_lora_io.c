/* test_lora_io.c — LoRA adapters on disk: target parsing, initialisation,
 * HF PEFT save/load (round trips, peft-written fixtures from
 * tools/make_lora_fixtures.py, bad inputs), merging into HF folders and GGUF
 * files (logits vs peft's merge_and_unload), and llama.cpp GGUF LoRA export
 * (layout vs tests/fixtures/lora/llama_all/gguf_lora.json). */
#define _XOPEN_SOURCE 700
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "kernels/quant.h"
#include "model/model.h"
#include "peft.h"
#include "peft/lora.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <unistd.h>

#define MFIX "tests/fixtures/models/"
#define LFIX "tests/fixtures/lora/"

/* ---- helpers ------------------------------------------------------------------ */

typedef struct {
    peft_ctx *ctx;
    peft_model *m;
} loaded;

static loaded load_model(const char *path) {
    loaded l = {0};
    peft_ctx_params p = peft_ctx_default_params();
    p.n_threads = 2;
    l.ctx = peft_init(&p);
    l.m = peft_model_load(l.ctx, path);
    if (!l.m) fprintf(stderr, "  load %s: %s\n", path, peft_last_error(l.ctx));
    return l;
}

static void unload(loaded *l) {
    peft_model_free(l->m);
    peft_free(l->ctx);
    l->m = NULL;
    l->ctx = NULL;
}


static void make_tmp(char *buf, size_t cap) {
    snprintf(buf, cap, "/tmp/peft_lora_io_XXXXXX");
    if (!mkdtemp(buf)) buf[0] = 0;
}


static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

static bool has_python_module(const char *mod) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "python3 -c 'import %s' >/dev/null 2>&1", mod);
    return system(cmd) == 0;
}

/* ---- targets -------------------------------------------------------------------- */

#define BIT(r) (1u << (r))

static void parse_targets_llama(void) {
    loaded l = load_model(MFIX "tiny-llama");
    if (!l.m) { CHECK(0); return; }
    peft_err err = {0};
    uint32_t t = 0;
    CHECK_OK(lora_parse_targets(l.m, "q_proj,v_proj", &t, &err));
    CHECK_EQ_INT(t, BIT(ROLE_Q) | BIT(ROLE_V));
    CHECK_OK(lora_parse_targets(l.m, " k_proj , o_proj,", &t, &err));
    CHECK_EQ_INT(t, BIT(ROLE_K) | BIT(ROLE_O));
    CHECK_OK(lora_parse_targets(l.m, "all-linear", &t, &err));
    CHECK_EQ_INT(t, BIT(ROLE_Q) | BIT(ROLE_K) | BIT(ROLE_V) | BIT(ROLE_O) | BIT(ROLE_GATE) | BIT(ROLE_UP) |
                        BIT(ROLE_DOWN));
    CHECK_OK(lora_parse_targets(l.m, "gate_proj,up_proj,down_proj", &t, &err));
    CHECK_EQ_INT(t, BIT(ROLE_GATE) | BIT(ROLE_UP) | BIT(ROLE_DOWN));
    /* errors name the offending module */
    CHECK(lora_parse_targets(l.m, "q_proj,c_attn", &t, &err) == PEFT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "'c_attn'") != NULL, "%s", err.msg);
    CHECK(lora_parse_targets(l.m, "q_prj", &t, &err) == PEFT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "q_prj") && strstr(err.msg, "llama"), "%s", err.msg);
    CHECK(lora_parse_targets(l.m, "", &t, &err) == PEFT_ERR_INVALID);
    CHECK(lora_parse_targets(l.m, " , ", &t, &err) == PEFT_ERR_INVALID);
    CHECK(lora_parse_targets(l.m, "lm_head", &t, &err) == PEFT_ERR_INVALID);
    const char *names[ROLE_N_LINEAR];
    CHECK_EQ_INT(lora_target_names(l.m, BIT(ROLE_Q) | BIT(ROLE_DOWN), names, ROLE_N_LINEAR), 2);
    CHECK(strcmp(names[0], "q_proj") == 0 && strcmp(names[1], "down_proj") == 0);
    unload(&l);
}

static void parse_targets_gpt2_c_proj_is_both(void) {
    loaded l = load_model(MFIX "tiny-gpt2");
    if (!l.m) { CHECK(0); return; }
    peft_err err = {0};
    uint32_t t = 0;
    CHECK_OK(lora_parse_targets(l.m, "c_proj", &t, &err));
    CHECK_EQ_INT(t, BIT(ROLE_O) | BIT(ROLE_DOWN));
    CHECK_OK(lora_parse_targets(l.m, "c_attn,c_proj,c_fc", &t, &err));
    CHECK_EQ_INT(t, BIT(ROLE_QKV) | BIT(ROLE_O) | BIT(ROLE_UP) | BIT(ROLE_DOWN));
    uint32_t all = 0;
    CHECK_OK(lora_parse_targets(l.m, "all-linear", &all, &err));
    CHECK_EQ_INT(all, t);
    CHECK_OK(lora_parse_targets(l.m, "attn.c_proj", &t, &err));
    CHECK_EQ_INT(t, BIT(ROLE_O));
    CHECK_OK(lora_parse_targets(l.m, "mlp.c_proj", &t, &err));
    CHECK_EQ_INT(t, BIT(ROLE_DOWN));
    CHECK(lora_parse_targets(l.m, "q_proj", &t, &err) == PEFT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "'q_proj'") && strstr(err.msg, "gpt2"), "%s", err.msg);
    /* names written back: c_proj only when both projections are adapted */
    const char *names[ROLE_N_LINEAR];
    int n = lora_target_names(l.m, BIT(ROLE_O), names, ROLE_N_LINEAR);
    CHECK(n == 1 && strcmp(names[0], "attn.c_proj") == 0);
    n = lora_target_names(l.m, BIT(ROLE_O) | BIT(ROLE_DOWN) | BIT(ROLE_QKV), names, ROLE_N_LINEAR);
    CHECK(n == 2 && strcmp(names[0], "c_attn") == 0 && strcmp(names[1], "c_proj") == 0);
    unload(&l);
}

/* ---- init --------------------------------------------------------------------- */

static void init_statistics_match_hf(void) {
    loaded l = load_model(MFIX "tiny-llama");
    if (!l.m) { CHECK(0); return; }
    peft_err err = {0};
    lora_config c = lora_default_config();
    CHECK_EQ_INT(c.r, 8);
    CHECK_NEAR(c.alpha, 16, 0);
    CHECK_NEAR(lora_scale(&c), 2.0, 1e-7);
    c.rslora = true;
    CHECK_NEAR(lora_scale(&c), 16 / sqrt(8.0), 1e-6);
    c.rslora = false;
    c.targets = 0; /* default for llama: q_proj, v_proj */
    adapter *a = NULL;
    CHECK_OK(lora_new(l.m, &c, &a, &err));
    if (!a) { fprintf(stderr, "  %s\n", err.msg); unload(&l); return; }
    CHECK_EQ_INT(lora_of(a)->n_modules, 4);
    CHECK_EQ_INT(lora_of(a)->cfg.targets, BIT(ROLE_Q) | BIT(ROLE_V));
    /* layer-major, role order, contiguous A then B */
    CHECK(lora_of(a)->mods[0].layer == 0 && lora_of(a)->mods[0].role == ROLE_Q);
    CHECK(lora_of(a)->mods[1].layer == 0 && lora_of(a)->mods[1].role == ROLE_V);
    CHECK(lora_of(a)->mods[2].layer == 1 && lora_of(a)->mods[2].role == ROLE_Q);
    CHECK(lora_of(a)->mods[0].A == a->params && lora_of(a)->mods[0].gA == a->grads);
    int64_t expect = 0;
    for (int i = 0; i < lora_of(a)->n_modules; i++) {
        const lora_module *md = &lora_of(a)->mods[i];
        CHECK(md->A == a->params + expect);
        CHECK(md->B == md->A + (size_t)md->r * md->in);
        expect += (int64_t)md->r * (md->in + md->out);
        CHECK(lora_find(a, md->layer, md->role) == md);
        CHECK_NEAR(md->scale, 2.0, 1e-7);
    }
    CHECK_EQ_INT(a->n_params, expect);
    CHECK(lora_find(a, 0, ROLE_K) == NULL && lora_find(a, 2, ROLE_Q) == NULL && lora_find(a, -1, ROLE_Q) == NULL);
    CHECK_EQ_INT(lora_of(a)->mods[1].out, 32);   /* v_proj: 2 kv heads x 16 */
    /* A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0 */
    const double bound = 1.0 / sqrt(64.0);
    double sum = 0, sq = 0, mx = 0;
    int64_t n = 0;
    bool b_zero = true;
    for (int i = 0; i < lora_of(a)->n_modules; i++) {
        const lora_module *md = &lora_of(a)->mods[i];
        for (int64_t k = 0; k < (int64_t)md->r * md->in; k++) {
            sum += md->A[k];
            sq += (double)md->A[k] * md->A[k];
            mx = fmax(mx, fabs(md->A[k]));
            n++;
        }
        for (int64_t k = 0; k < (int64_t)md->r * md->out; k++) b_zero &= md->B[k] == 0.0f;
    }
    CHECK(b_zero);
    CHECK(mx <= bound && mx > 0.95 * bound);
    CHECK_NEAR(sum / n, 0.0, 0.02);
    CHECK_NEAR(sq / n, bound * bound / 3, 0.1 * bound * bound / 3);
    bool g_zero = true;
    for (int64_t k = 0; k < a->n_params; k++) g_zero &= a->grads[k] == 0.0f;
    CHECK(g_zero);
    /* same seed, same numbers; another seed, others */
    adapter *b = NULL;
    CHECK_OK(lora_new(l.m, &c, &b, &err));
    if (b) CHECK(memcmp(a->params, b->params, sizeof(float) * (size_t)a->n_params) == 0);
    adapter_free(b);
    b = NULL;
    c.seed = 7;
    CHECK_OK(lora_new(l.m, &c, &b, &err));
    if (b) CHECK(memcmp(a->params, b->params, sizeof(float) * (size_t)a->n_params) != 0);
    adapter_free(b);
    b = NULL;
    /* gaussian: A ~ N(0, std 1/r) as peft, B = 0 */
    c.init = LORA_INIT_GAUSSIAN;
    c.targets = BIT(ROLE_GATE) | BIT(ROLE_UP) | BIT(ROLE_DOWN);
    CHECK_OK(lora_new(l.m, &c, &b, &err));
    if (b) {
        sum = sq = 0;
        n = 0;
        for (int i = 0; i < lora_of(b)->n_modules; i++)
            for (int64_t k = 0; k < (int64_t)lora_of(b)->mods[i].r * lora_of(b)->mods[i].in; k++, n++) {
                sum += lora_of(b)->mods[i].A[k];
                sq += (double)lora_of(b)->mods[i].A[k] * lora_of(b)->mods[i].A[k];
            }
        CHECK_NEAR(sqrt(sq / n), 1.0 / 8, 0.01);
        CHECK_NEAR(sum / n, 0, 0.01);
        CHECK(lora_of(b)->mods[0].B[0] == 0.0f);
    }
    adapter_free(b);
    b = NULL;
    /* bad configs */
    c = lora_default_config();
    c.layers = 1u << 2;   /* tiny-llama has 2 layers */
    CHECK(lora_new(l.m, &c, &b, &err) == PEFT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "layer 2") != NULL, "%s", err.msg);
    c = lora_default_config();
    c.r = 0;
    CHECK(lora_new(l.m, &c, &b, &err) == PEFT_ERR_INVALID);
    c = lora_default_config();
    c.targets = BIT(ROLE_QKV);
    CHECK(lora_new(l.m, &c, &b, &err) == PEFT_ERR_INVALID);
    CHECK(b == NULL);
    adapter_free(a);
    unload(&l);
    /* GPT-2's default is c_attn */
    l = load_model(MFIX "tiny-gpt2");
    if (!l.m) { CHECK(0); return; }
    c = lora_default_config();
    CHECK_OK(lora_new(l.m, &c, &a, &err));
    if (a) {
        CHECK_EQ_INT(lora_of(a)->n_modules, 2);
        CHECK(lora_of(a)->mods[0].role == ROLE_QKV && lora_of(a)->mods[0].out == 192 && lora_of(a)->mods[0].in == 64);
    }
    adapter_free(a);
    unload(&l);
}

/* ---- save / load ---------------------------------------------------------------- */

static bool same_adapter(const adapter *a, const adapter *b) {
    if (lora_of(a)->n_modules != lora_of(b)->n_modules || a->n_params != b->n_params) return false;
    for (int i = 0; i < lora_of(a)->n_modules; i++) {
        const lora_module *x = &lora_of(a)->mods[i], *y = &lora_of(b)->mods[i];
        if (x->layer != y->layer || x->role != y->role || x->r != y->r || x->in != y->in || x->out != y->out ||
            x->scale != y->scale)
            return false;
    }
    return memcmp(a->params, b->params, sizeof(float) * (size_t)a->n_params) == 0;
}

static cJSON *read_json(const char *path) {
    char *text = NULL;
    size_t len = 0;
    peft_err err = {0};
    if (peft_read_file(path, &text, &len, &err)) return NULL;
    cJSON *o = cJSON_Parse(text);
    free(text);
    return o;
}

static void save_load_round_trip_is_bit_exact(void) {
    loaded l = load_model(MFIX "tiny-llama");
    if (!l.m) { CHECK(0); return; }
    char tmp[64], dir[128], path[256];
    make_tmp(tmp, sizeof tmp);
    snprintf(dir, sizeof dir, "%s/deep/er/adapter", tmp);   /* mkdir -p */
    peft_err err = {0};
    lora_config c = lora_default_config();
    c.r = 4;
    c.alpha = 12;
    c.rslora = true;
    c.init = LORA_INIT_ZERO_B_RANDOM_BOTH;   /* B non-zero too */
    c.layers = 1u << 1;
    CHECK_OK(lora_parse_targets(l.m, "q_proj,k_proj,down_proj", &c.targets, &err));
    adapter *a = NULL, *b = NULL;
    CHECK_OK(lora_new(l.m, &c, &a, &err));
    if (!a) goto out;
    CHECK_EQ_INT(lora_of(a)->n_modules, 3);
    CHECK(lora_of(a)->mods[0].B[0] != 0.0f);
    CHECK_OK(adapter_save(a, l.m, dir, &err));
    CHECK_OK(lora_load(l.m, dir, &b, &err));
    if (!b) { fprintf(stderr, "  %s\n", err.msg); goto out; }
    CHECK(same_adapter(a, b));
    CHECK_EQ_INT(lora_of(b)->cfg.r, 4);
    CHECK_NEAR(lora_of(b)->cfg.alpha, 12, 0);
    CHECK(lora_of(b)->cfg.rslora);
    CHECK_EQ_INT(lora_of(b)->cfg.targets, c.targets);
    CHECK_EQ_INT(lora_of(b)->cfg.layers, 1u << 1);
    CHECK(lora_of(b)->cfg.init == LORA_INIT_ZERO_B_RANDOM_BOTH);
    CHECK(b->base_model && strcmp(b->base_model, MFIX "tiny-llama") == 0);
    /* the config carries what HF PEFT needs */
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    cJSON *o = read_json(path);
    CHECK(o != NULL);
    if (o) {
        CHECK(strcmp(cJSON_GetObjectItem(o, "peft_type")->valuestring, "LORA") == 0);
        CHECK(strcmp(cJSON_GetObjectItem(o, "task_type")->valuestring, "CAUSAL_LM") == 0);
        CHECK(strcmp(cJSON_GetObjectItem(o, "bias")->valuestring, "none") == 0);
        CHECK(cJSON_GetObjectItem(o, "r")->valueint == 4);
        CHECK(cJSON_GetObjectItem(o, "lora_alpha")->valuedouble == 12);
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(o, "use_rslora")));
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(o, "inference_mode")));
        CHECK(cJSON_IsFalse(cJSON_GetObjectItem(o, "use_dora")));
        CHECK(cJSON_IsFalse(cJSON_GetObjectItem(o, "fan_in_fan_out")));
        CHECK(cJSON_IsFalse(cJSON_GetObjectItem(o, "init_lora_weights")));
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(o, "modules_to_save")));
        const cJSON *lt = cJSON_GetObjectItem(o, "layers_to_transform");
        CHECK(cJSON_GetArraySize(lt) == 1 && cJSON_GetArrayItem(lt, 0)->valueint == 1);
        const cJSON *tm = cJSON_GetObjectItem(o, "target_modules");
        CHECK(cJSON_GetArraySize(tm) == 3);
        CHECK(strcmp(cJSON_GetArrayItem(tm, 0)->valuestring, "q_proj") == 0);
        CHECK(strcmp(cJSON_GetArrayItem(tm, 2)->valuestring, "down_proj") == 0);
        cJSON_Delete(o);
    }
    /* keys and shapes */
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    st_archive *st = NULL;
    CHECK_OK(st_open(path, &st, &err));
    if (st) {
        CHECK_EQ_INT(st_count(st), 6);
        const st_tensor *t = st_find(st, "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight");
        CHECK(t && t->dtype == PEFT_DT_F32 && t->shape[0] == 32 && t->shape[1] == 4);
        t = st_find(st, "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight");
        CHECK(t && t->shape[0] == 4 && t->shape[1] == 128);
        CHECK(st_metadata(st, "format") && strcmp(st_metadata(st, "format"), "pt") == 0);
        st_close(st);
    }
    /* saving again over the same folder works (atomic replace) */
    CHECK_OK(adapter_save(b, l.m, dir, &err));
out:
    adapter_free(a);
    adapter_free(b);
    unload(&l);
    test_rm_rf(tmp);
}

/* An adapter made on a GGUF base is saved with HF names and loads on the HF
 * folder of the same model (and, if python has safetensors, in python). */
static void gguf_base_saves_hf_names(void) {
    loaded g = load_model(MFIX "tiny-llama.f32.gguf"), h = load_model(MFIX "tiny-llama");
    char tmp[64];
    make_tmp(tmp, sizeof tmp);
    peft_err err = {0};
    adapter *a = NULL, *b = NULL;
    if (!g.m || !h.m) { CHECK(0); goto out; }
    lora_config c = lora_default_config();
    c.init = LORA_INIT_ZERO_B_RANDOM_BOTH;
    CHECK_OK(lora_parse_targets(g.m, "all-linear", &c.targets, &err));
    CHECK_OK(lora_new(g.m, &c, &a, &err));
    if (!a) goto out;
    CHECK_EQ_INT(lora_of(a)->n_modules, 14);
    CHECK_OK(adapter_save(a, g.m, tmp, &err));
    char path[256];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", tmp);
    st_archive *st = NULL;
    CHECK_OK(st_open(path, &st, &err));
    if (st) {
        CHECK_EQ_INT(st_count(st), 28);
        CHECK(st_find(st, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") != NULL);
        CHECK(st_find(st, "base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight") != NULL);
        for (int i = 0; i < st_count(st); i++) CHECK(strstr(st_at(st, i)->name, "blk.") == NULL);
        st_close(st);
    }
    CHECK_OK(lora_load(h.m, tmp, &b, &err));
    if (b) CHECK(same_adapter(a, b));
    adapter_free(b);
    b = NULL;
    CHECK_OK(lora_load(g.m, tmp, &b, &err));
    if (b) CHECK(same_adapter(a, b));
    if (has_python_module("safetensors") && has_python_module("numpy")) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd,
                 "python3 -c \"\nfrom safetensors.numpy import load_file\nd = load_file('%s')\n"
                 "k = 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'\n"
                 "assert len(d) == 28 and d[k].shape == (8, 64) and str(d[k].dtype) == 'float32', d.keys()\n"
                 "assert d['base_model.model.model.layers.1.mlp.down_proj.lora_B.weight'].shape == (64, 8)\n"
                 "assert abs(float(d[k][0, 0]) - %.9g) < 1e-9\n\"",
                 path, (double)lora_of(a)->mods[0].A[0]);
        CHECK_MSG(system(cmd) == 0, "python safetensors could not read %s", path);
    } else {
        printf("    (python safetensors not available: python check skipped)\n");
    }
out:
    adapter_free(a);
    adapter_free(b);
    unload(&g);
    unload(&h);
    test_rm_rf(tmp);
}

/* ---- peft fixtures ----------------------------------------------------------------- */

typedef struct {
    const char *name, *model, *gguf, *gguf_q8;
    int n_modules, r;
    double scale;
    uint32_t targets;
    uint64_t layers;
} lcase;

static const lcase cases[] = {
    {"llama_all", MFIX "tiny-llama", MFIX "tiny-llama.f32.gguf", MFIX "tiny-llama.q8_0.gguf", 14, 4, 2.0,
     BIT(ROLE_Q) | BIT(ROLE_K) | BIT(ROLE_V) | BIT(ROLE_O) | BIT(ROLE_GATE) | BIT(ROLE_UP) | BIT(ROLE_DOWN), 0},
    {"llama_qv_rslora", MFIX "tiny-llama", MFIX "tiny-llama.f32.gguf", NULL, 2, 8, 16 / 2.8284271247461903,
     BIT(ROLE_Q) | BIT(ROLE_V), 1u << 1},
    {"gpt2_all", MFIX "tiny-gpt2", MFIX "tiny-gpt2.f32.gguf", MFIX "tiny-gpt2.q8_0.gguf", 8, 4, 2.0,
     BIT(ROLE_QKV) | BIT(ROLE_O) | BIT(ROLE_UP) | BIT(ROLE_DOWN), 0},
    {"qwen2_qv", MFIX "tiny-qwen2", MFIX "tiny-qwen2.f32.gguf", MFIX "tiny-qwen2.q8_0.gguf", 4, 4, 1.0,
     BIT(ROLE_Q) | BIT(ROLE_V), 0},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

static void peft_adapters_load(void) {
    for (int ci = 0; ci < N_CASES; ci++) {
        const lcase *c = &cases[ci];
        char dir[256], path[300];
        snprintf(dir, sizeof dir, LFIX "%s/adapter", c->name);
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
        if (!peft_file_exists(path)) TEST_FAIL("%s missing (tools/make_lora_fixtures.py)", path);
        loaded l = load_model(c->model);
        if (!l.m) { CHECK(0); continue; }
        peft_err err = {0};
        adapter *a = NULL;
        st_archive *st = NULL;
        CHECK_OK(lora_load(l.m, dir, &a, &err));
        CHECK_OK(st_open(path, &st, &err));
        if (!a || !st) { fprintf(stderr, "  %s: %s\n", c->name, err.msg); goto next; }
        CHECK_EQ_INT(lora_of(a)->n_modules, c->n_modules);
        CHECK_EQ_INT(lora_of(a)->cfg.r, c->r);
        CHECK_NEAR(lora_scale(&lora_of(a)->cfg), c->scale, 1e-6);
        CHECK_EQ_INT(lora_of(a)->cfg.targets, c->targets);
        CHECK_EQ_INT(lora_of(a)->cfg.layers, c->layers);
        CHECK(a->base_model && strcmp(a->base_model, c->model) == 0);
        CHECK_EQ_INT(st_count(st), 2 * c->n_modules);
        int checked = 0;
        for (int i = 0; i < lora_of(a)->n_modules; i++) {
            const lora_module *md = &lora_of(a)->mods[i];
            CHECK_EQ_INT(md->r, c->r);
            CHECK_NEAR(md->scale, c->scale, 1e-6);
            if (i) CHECK(md->layer > md[-1].layer || (md->layer == md[-1].layer && md->role > md[-1].role));
            char hp[256], key[400];
            model_linear_hf_path(l.m, md->layer, md->role, hp, sizeof hp);
            for (int ab = 0; ab < 2; ab++) {
                snprintf(key, sizeof key, "base_model.model.%s.lora_%c.weight", hp, ab ? 'B' : 'A');
                const st_tensor *t = st_find(st, key);
                CHECK_MSG(t != NULL, "%s", key);
                if (!t) continue;
                CHECK(t->nbytes == sizeof(float) * (size_t)md->r * (ab ? md->out : md->in));
                CHECK(memcmp(t->data, ab ? md->B : md->A, t->nbytes) == 0);
                checked++;
            }
        }
        CHECK_EQ_INT(checked, 2 * c->n_modules);
        printf("    %-16s %2d modules, r %d, scale %.6f\n", c->name, lora_of(a)->n_modules, lora_of(a)->cfg.r, lora_scale(&lora_of(a)->cfg));
    next:
        st_close(st);
        adapter_free(a);
        unload(&l);
    }
}

/* Half-precision adapter tensors are accepted and converted. */
static void half_precision_adapters_load(void) {
    loaded l = load_model(MFIX "tiny-llama");
    if (!l.m) { CHECK(0); return; }
    char tmp[64], path[256];
    make_tmp(tmp, sizeof tmp);
    peft_err err = {0};
    lora_config c = lora_default_config();
    c.r = 2;
    c.init = LORA_INIT_ZERO_B_RANDOM_BOTH;
    adapter *a = NULL, *b = NULL;
    CHECK_OK(lora_new(l.m, &c, &a, &err));
    CHECK_OK(adapter_save(a, l.m, tmp, &err));
    /* rewrite the tensors as BF16 (A) and F16 (B) */
    st_write_tensor t[8];
    uint16_t *h[8] = {0};
    int n = 0;
    for (int i = 0; a && i < lora_of(a)->n_modules; i++) {
        lora_module *md = &lora_of(a)->mods[i];
        for (int ab = 0; ab < 2; ab++, n++) {
            int64_t cnt = (int64_t)md->r * (ab ? md->out : md->in);
            float *v = ab ? md->B : md->A;
            h[n] = malloc(sizeof(uint16_t) * (size_t)cnt);
            for (int64_t k = 0; k < cnt; k++) {
                h[n][k] = ab ? peft_f32_to_f16(v[k]) : peft_f32_to_bf16(v[k]);
                v[k] = ab ? peft_f16_to_f32(h[n][k]) : peft_bf16_to_f32(h[n][k]);   /* expected values */
            }
            char *name = malloc(256), hp[200];
            model_linear_hf_path(l.m, md->layer, md->role, hp, sizeof hp);
            snprintf(name, 256, "base_model.model.%s.lora_%c.weight", hp, ab ? 'B' : 'A');
            t[n] = (st_write_tensor){.name = name, .dtype = ab ? PEFT_DT_F16 : PEFT_DT_BF16, .ndim = 2,
                                     .shape = {ab ? md->out : md->r, ab ? md->r : md->in}, .data = h[n]};
        }
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", tmp);
    CHECK_OK(st_write(path, t, n, NULL, &err));
    CHECK_OK(lora_load(l.m, tmp, &b, &err));
    if (a && b) CHECK(same_adapter(a, b));
    for (int i = 0; i < n; i++) { free(h[i]); free((char *)t[i].name); }
    adapter_free(a);
    adapter_free(b);
    unload(&l);
    test_rm_rf(tmp);
}

/* ---- bad inputs -------------------------------------------------------------------- */

/* Copies an adapter folder's config and writes the given tensors. */
static void write_adapter(const char *dir, const char *config_json, const st_write_tensor *t, int n) {
    char path[300];
    peft_err err = {0};
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    write_text(path, config_json);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (n) st_write(path, t, n, NULL, &err);
}

static void mismatched_adapters_fail_clearly(void) {
    loaded l = load_model(MFIX "tiny-llama");
    if (!l.m) { CHECK(0); return; }
    if (!peft_file_exists(LFIX "gpt2_all/adapter/adapter_config.json")) { unload(&l); TEST_FAIL("committed LoRA fixtures missing (tools/make_lora_fixtures.py)"); }
    char tmp[64];
    make_tmp(tmp, sizeof tmp);
    peft_err err = {0};
    adapter *a = NULL;
    /* a GPT-2 adapter on a llama */
    CHECK(lora_load(l.m, LFIX "gpt2_all/adapter", &a, &err) == PEFT_ERR_SHAPE);
    CHECK_MSG(strstr(err.msg, "adapter_model.safetensors") && strstr(err.msg, "base_model.model.transformer.h.0."),
              "%s", err.msg);
    CHECK(a == NULL);
    printf("    gpt2 adapter on llama: %s\n", err.msg);
    /* a llama adapter on GPT-2 */
    loaded g = load_model(MFIX "tiny-gpt2");
    if (g.m) {
        CHECK(lora_load(g.m, LFIX "llama_all/adapter", &a, &err) == PEFT_ERR_SHAPE);
        CHECK_MSG(strstr(err.msg, "base_model.model.model.layers.") != NULL, "%s", err.msg);
    }
    unload(&g);
    char *cfg = NULL;
    size_t len = 0;
    CHECK_OK(peft_read_file(LFIX "llama_all/adapter/adapter_config.json", &cfg, &len, &err));
    static float zeros[128 * 8];
    /* wrong input width on A */
    st_write_tensor t[2] = {
        {.name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", .dtype = PEFT_DT_F32,
         .ndim = 2, .shape = {4, 32}, .data = zeros},
        {.name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", .dtype = PEFT_DT_F32,
         .ndim = 2, .shape = {64, 4}, .data = zeros}};
    write_adapter(tmp, cfg, t, 2);
    CHECK(lora_load(l.m, tmp, &a, &err) == PEFT_ERR_SHAPE);
    CHECK_MSG(strstr(err.msg, "adapter_model.safetensors: base_model.model.model.layers.0.self_attn.q_proj.lora_A"
                              ".weight has shape [4, 32], the model's q_proj takes 64 inputs") != NULL,
              "%s", err.msg);
    printf("    wrong shape: %s\n", err.msg);
    /* wrong output height on B */
    t[0].shape[1] = 64;
    t[1].shape[0] = 48;
    write_adapter(tmp, cfg, t, 2);
    CHECK(lora_load(l.m, tmp, &a, &err) == PEFT_ERR_SHAPE);
    CHECK_MSG(strstr(err.msg, "q_proj.lora_B.weight has shape [48, 4], the model's q_proj has 64 outputs"), "%s",
              err.msg);
    /* rank disagreeing with the config */
    t[0].shape[0] = 2;
    t[1].shape[0] = 64;
    t[1].shape[1] = 2;
    write_adapter(tmp, cfg, t, 2);
    CHECK(lora_load(l.m, tmp, &a, &err) == PEFT_ERR_SHAPE);
    CHECK_MSG(strstr(err.msg, "rank 2") && strstr(err.msg, "r = 4"), "%s", err.msg);
    /* A without B */
    t[0].shape[0] = 4;
    write_adapter(tmp, cfg, t, 1);
    CHECK(lora_load(l.m, tmp, &a, &err) == PEFT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "q_proj.lora_A.weight has no matching lora_B"), "%s", err.msg);
    /* a layer the model does not have */
    t[0].name = "base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight";
    t[1].name = "base_model.model.model.layers.5.self_attn.q_proj.lora_B.weight";
    t[1].shape[1] = 4;
    write_adapter(tmp, cfg, t, 2);
    CHECK(lora_load(l.m, tmp, &a, &err) == PEFT_ERR_SHAPE);
    CHECK_MSG(strstr(err.msg, "layers.5.self_attn.q_proj.lora_A.weight targets layer 5") &&
                  strstr(err.msg, "2 layers"), "%s", err.msg);
    /* a non-LoRA tensor */
    t[0].name = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector";
    t[0].ndim = 1;
    t[0].shape[0] = 64;
    write_adapter(tmp, cfg, t, 1);
    CHECK(lora_load(l.m, tmp, &a, &err) == PEFT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "lora_magnitude_vector is not a LoRA tensor"), "%s", err.msg);
    /* bad JSON */
    write_adapter(tmp, "{\"peft_type\": \"LORA\", \"r\": 4,,}", NULL, 0);
    CHECK(lora_load(l.m, tmp, &a, &err) == PEFT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "adapter_config.json") && strstr(err.msg, "JSON"), "%s", err.msg);
    /* another PEFT method */
    write_adapter(tmp, "{\"peft_type\": \"PROMPT_TUNING\", \"num_virtual_tokens\": 8}", NULL, 0);
    CHECK(lora_load(l.m, tmp, &a, &err) == PEFT_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(err.msg, "adapter_config.json") && strstr(err.msg, "PROMPT_TUNING"), "%s", err.msg);
    printf("    prompt tuning: %s\n", err.msg);
    /* DoRA without tensors, missing r */
    write_adapter(tmp, "{\"peft_type\": \"LORA\", \"r\": 4, \"use_dora\": true}", NULL, 0);
    CHECK(lora_load(l.m, tmp, &a, &err) == PEFT_ERR_FORMAT);
    write_adapter(tmp, "{\"peft_type\": \"LORA\"}", NULL, 0);
    CHECK(lora_load(l.m, tmp, &a, &err) == PEFT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "\"r\""), "%s", err.msg);
    /* no such folder */
    CHECK(lora_load(l.m, "/nonexistent/adapter", &a, &err) == PEFT_ERR_IO);
    CHECK(a == NULL);
    free(cfg);
    unload(&l);
    test_rm_rf(tmp);
}

/* ---- merge ------------------------------------------------------------------------ */

static int ref_logits(const char *case_name, const char *key, int *B, int *T, int *V, int32_t **ids, float **lg) {
    char path[256];
    snprintf(path, sizeof path, LFIX "%s/reference.safetensors", case_name);
    st_archive *a = NULL;
    peft_err err = {0};
    if (st_open(path, &a, &err)) return -1;
    const st_tensor *ti = st_find(a, "input_ids"), *tl = st_find(a, key);
    if (!ti || !tl) { st_close(a); return -1; }
    *B = (int)ti->shape[0];
    *T = (int)ti->shape[1];
    *V = (int)tl->shape[2];
    *ids = malloc(ti->nbytes);
    *lg = malloc(tl->nbytes);
    memcpy(*ids, ti->data, ti->nbytes);
    memcpy(*lg, tl->data, tl->nbytes);
    st_close(a);
    return 0;
}

/* max |logits(model at path) - reference[key]| over the batch. */
static double logit_diff(const char *path, const char *case_name, const char *key) {
    int B, T, V;
    int32_t *ids = NULL;
    float *ref = NULL;
    if (ref_logits(case_name, key, &B, &T, &V, &ids, &ref)) return INFINITY;
    loaded l = load_model(path);
    double worst = INFINITY;
    if (l.m) {
        float *out = malloc(sizeof(float) * (size_t)T * V);
        worst = 0;
        for (int b = 0; b < B; b++) {
            if (peft_model_logits(l.m, ids + b * T, T, out)) { worst = INFINITY; break; }
            worst = fmax(worst, test_max_abs_diff(out, ref + (size_t)b * T * V, (size_t)T * V));
        }
        free(out);
    }
    unload(&l);
    free(ids);
    free(ref);
    return worst;
}

/* Merges case c's adapter into base, writing out in outtype; 0 on success. */
static int merge_case_as(const lcase *c, const char *base, const char *out, int outtype) {
    loaded l = load_model(base);
    if (!l.m) return -1;
    char dir[256];
    snprintf(dir, sizeof dir, LFIX "%s/adapter", c->name);
    peft_err err = {0};
    adapter *a = NULL;
    int rc = lora_load(l.m, dir, &a, &err);
    if (!rc) rc = lora_merge_save_as(a, l.m, out, outtype, NULL, &err);
    if (rc) fprintf(stderr, "  %s: %s\n", c->name, err.msg);
    adapter_free(a);
    unload(&l);
    return rc;
}

static int merge_case(const lcase *c, const char *base, const char *out) {
    return merge_case_as(c, base, out, MERGE_OUT_DEFAULT);
}

static void merged_hf_folders_match_peft(void) {
    if (!peft_file_exists(LFIX "llama_all/reference.safetensors")) TEST_FAIL("committed LoRA fixtures missing (tools/make_lora_fixtures.py)");
    for (int ci = 0; ci < N_CASES; ci++) {
        const lcase *c = &cases[ci];
        char tmp[64], out[128];
        make_tmp(tmp, sizeof tmp);
        snprintf(out, sizeof out, "%s/merged", tmp);
        CHECK_OK(merge_case(c, c->model, out));
        char p[256];
        snprintf(p, sizeof p, "%s/tokenizer.json", out);
        CHECK(peft_file_exists(p));
        double dm = logit_diff(out, c->name, "merged_logits"), dl = logit_diff(out, c->name, "logits");
        printf("    %-16s hf   merged vs peft merged %.3g, vs adapter logits %.3g\n", c->name, dm, dl);
        CHECK(dm <= 1e-4);
        CHECK(dl <= 1e-4);
        /* untouched tensors are copied byte for byte, merged ones keep the dtype */
        st_archive *x = NULL, *y = NULL;
        peft_err err = {0};
        CHECK_OK(st_open(c->model, &x, &err));
        CHECK_OK(st_open(out, &y, &err));
        if (x && y) {
            CHECK_EQ_INT(st_count(x), st_count(y));
            int same = 0, changed = 0;
            for (int i = 0; i < st_count(x); i++) {
                const st_tensor *s = st_at(x, i), *t = st_find(y, s->name);
                CHECK_MSG(t != NULL, "%s", s->name);
                if (!t) continue;
                CHECK(t->dtype == s->dtype && t->nbytes == s->nbytes);
                if (memcmp(s->data, t->data, s->nbytes) == 0) same++;
                else changed++;
            }
            CHECK_EQ_INT(changed, c->n_modules);
            CHECK_EQ_INT(same + changed, st_count(x));
        }
        st_close(x);
        st_close(y);
        test_rm_rf(tmp);
    }
}

static void merged_gguf_matches_peft(void) {
    if (!peft_file_exists(LFIX "llama_all/reference.safetensors")) TEST_FAIL("committed LoRA fixtures missing (tools/make_lora_fixtures.py)");
    for (int ci = 0; ci < N_CASES; ci++) {
        const lcase *c = &cases[ci];
        char tmp[64], out[128];
        make_tmp(tmp, sizeof tmp);
        snprintf(out, sizeof out, "%s/merged.gguf", tmp);
        CHECK_OK(merge_case(c, c->gguf, out));
        double dm = logit_diff(out, c->name, "merged_logits"), dl = logit_diff(out, c->name, "logits");
        printf("    %-16s gguf merged vs peft merged %.3g, vs adapter logits %.3g\n", c->name, dm, dl);
        CHECK(dm <= 1e-4);
        CHECK(dl <= 1e-4);
        gguf_file *x = NULL, *y = NULL;
        peft_err err = {0};
        CHECK_OK(gguf_open(c->gguf, &x, &err));
        CHECK_OK(gguf_open(out, &y, &err));
        if (x && y) {
            CHECK_EQ_INT(gguf_n_kv(x), gguf_n_kv(y));
            CHECK_EQ_INT(gguf_n_tensors(x), gguf_n_tensors(y));
            int changed = 0;
            for (int i = 0; i < gguf_n_tensors(x); i++) {
                const gguf_tensor *s = gguf_tensor_at(x, i), *t = gguf_find_tensor(y, s->name);
                if (!t) { CHECK_MSG(0, "%s", s->name); continue; }
                CHECK(t->ggml_type == s->ggml_type && t->nbytes == s->nbytes);
                changed += memcmp(s->data, t->data, s->nbytes) != 0;
            }
            CHECK_EQ_INT(changed, c->n_modules);
        }
        gguf_close(x);
        gguf_close(y);
        test_rm_rf(tmp);
    }
}

/* With outtype keep, Q8_0 bases stay Q8_0; the merged model is the Q8_0
 * base plus the delta (checked against merging in f32 and quantizing,
 * through the logits). By default the changed tensors become F16 and the
 * rest stay Q8_0 byte for byte. */
static void merged_q8_0_gguf_keeps_types(void) {
    if (!peft_file_exists(LFIX "llama_all/reference.safetensors")) TEST_FAIL("committed LoRA fixtures missing (tools/make_lora_fixtures.py)");
    for (int ci = 0; ci < N_CASES; ci++) {
        const lcase *c = &cases[ci];
        if (!c->gguf_q8) continue;
        char tmp[64], out[128];
        make_tmp(tmp, sizeof tmp);
        snprintf(out, sizeof out, "%s/merged.q8_0.gguf", tmp);
        CHECK_OK(merge_case_as(c, c->gguf_q8, out, MERGE_OUT_KEEP));
        gguf_file *x = NULL, *y = NULL;
        peft_err err = {0};
        CHECK_OK(gguf_open(c->gguf_q8, &x, &err));
        CHECK_OK(gguf_open(out, &y, &err));
        int n_q8 = 0;
        if (x && y) {
            for (int i = 0; i < gguf_n_tensors(x); i++) {
                const gguf_tensor *s = gguf_tensor_at(x, i), *t = gguf_find_tensor(y, s->name);
                if (!t) { CHECK_MSG(0, "%s", s->name); continue; }
                CHECK_MSG(t->ggml_type == s->ggml_type, "%s: %s -> %s", s->name, gguf_ggml_type_name(s->ggml_type),
                          gguf_ggml_type_name(t->ggml_type));
                n_q8 += t->dtype == PEFT_DT_Q8_0 && memcmp(s->data, t->data, s->nbytes) != 0;
            }
        }
        CHECK_EQ_INT(n_q8, c->n_modules);
        gguf_close(x);
        gguf_close(y);
        /* Q8_0 rounding of the merged weights: the logits stay near peft's
         * merged ones (the Q8_0 base alone is off by up to ~0.2). */
        double dm = logit_diff(out, c->name, "merged_logits");
        printf("    %-16s q8_0 merged vs peft merged (f32) %.3g\n", c->name, dm);
        CHECK(dm <= 0.5);
        /* default: changed tensors F16, the others untouched */
        CHECK_OK(merge_case(c, c->gguf_q8, out));
        CHECK_OK(gguf_open(c->gguf_q8, &x, &err));
        CHECK_OK(gguf_open(out, &y, &err));
        int n_f16 = 0;
        if (x && y) {
            for (int i = 0; i < gguf_n_tensors(x); i++) {
                const gguf_tensor *s = gguf_tensor_at(x, i), *t = gguf_find_tensor(y, s->name);
                if (!t) { CHECK_MSG(0, "%s", s->name); continue; }
                if (t->dtype == PEFT_DT_F16 && s->dtype == PEFT_DT_Q8_0) n_f16++;
                else CHECK_MSG(t->ggml_type == s->ggml_type && t->nbytes == s->nbytes && !memcmp(s->data, t->data, s->nbytes),
                               "%s changed", s->name);
            }
        }
        CHECK_EQ_INT(n_f16, c->n_modules);
        gguf_close(x);
        gguf_close(y);
        test_rm_rf(tmp);
    }
}

static void merge_refuses_to_overwrite_base(void) {
    loaded l = load_model(MFIX "tiny-llama");
    if (!l.m) { CHECK(0); return; }
    peft_err err = {0};
    lora_config c = lora_default_config();
    adapter *a = NULL;
    CHECK_OK(lora_new(l.m, &c, &a, &err));
    CHECK(lora_merge_save(a, l.m, MFIX "tiny-llama", &err) == PEFT_ERR_INVALID);
    adapter_free(a);
    unload(&l);
}

/* ---- GGUF LoRA export -------------------------------------------------------------- */

static void export_check_layout(const char *base, const char *out, const cJSON *spec) {
    loaded l = load_model(base);
    if (!l.m) { CHECK(0); return; }
    peft_err err = {0};
    adapter *a = NULL;
    gguf_file *g = NULL;
    st_archive *st = NULL;
    CHECK_OK(lora_load(l.m, LFIX "llama_all/adapter", &a, &err));
    if (a) CHECK_OK(lora_export_gguf(a, l.m, out, &err));
    CHECK_OK(gguf_open(out, &g, &err));
    CHECK_OK(st_open(LFIX "llama_all/adapter/adapter_model.safetensors", &st, &err));
    if (!g || !st) goto out;
    /* metadata as llama.cpp's converter writes it */
    const cJSON *meta = cJSON_GetObjectItem(spec, "metadata"), *kv;
    cJSON_ArrayForEach(kv, meta) {
        const char *type = cJSON_GetObjectItem(kv, "type")->valuestring;
        const cJSON *v = cJSON_GetObjectItem(kv, "value");
        int idx = gguf_find_key(g, kv->string);
        CHECK_MSG(idx >= 0, "missing key %s", kv->string);
        if (idx < 0) continue;
        if (strcmp(type, "STRING") == 0) {
            const char *s = gguf_get_str(g, kv->string);
            CHECK_MSG(s && strcmp(s, v->valuestring) == 0, "%s = %s", kv->string, s ? s : "(null)");
        } else if (strcmp(type, "FLOAT32") == 0) {
            CHECK(gguf_kv_type(g, idx) == GGUF_TYPE_FLOAT32);
            double d = 0;
            CHECK_OK(gguf_get_float(g, kv->string, &d, &err));
            CHECK_NEAR(d, v->valuedouble, 0);
        } else if (strcmp(type, "UINT32") == 0) {
            CHECK(gguf_kv_type(g, idx) == GGUF_TYPE_UINT32);
            int64_t n = 0;
            CHECK_OK(gguf_get_int(g, kv->string, &n, &err));
            CHECK_EQ_INT(n, v->valueint);
        }
    }
    const cJSON *tensors = cJSON_GetObjectItem(spec, "tensors"), *ts;
    CHECK_EQ_INT(gguf_n_tensors(g), cJSON_GetArraySize(tensors));
    int n_perm = 0;
    cJSON_ArrayForEach(ts, tensors) {
        const char *name = cJSON_GetObjectItem(ts, "name")->valuestring;
        const char *key = cJSON_GetObjectItem(ts, "hf_key")->valuestring;
        const cJSON *ne = cJSON_GetObjectItem(ts, "ne"), *perm = cJSON_GetObjectItem(ts, "rows_permuted");
        const gguf_tensor *t = gguf_find_tensor(g, name);
        const st_tensor *src = st_find(st, key);
        CHECK_MSG(t != NULL, "no tensor %s", name);
        if (!t || !src) continue;
        CHECK(t->dtype == PEFT_DT_F32);
        CHECK_EQ_INT(t->ndim, cJSON_GetArraySize(ne));
        for (int k = 0; k < t->ndim; k++) CHECK_EQ_INT(t->ne[k], cJSON_GetArrayItem(ne, k)->valueint);
        CHECK(t->nbytes == src->nbytes);
        if (t->nbytes != src->nbytes) continue;
        if (cJSON_IsString(perm)) {
            /* "LlamaModel.permute, n=4": rows of B (ne[0] floats each) */
            const char *np = strstr(perm->valuestring, "n=");
            int nh = np ? atoi(np + 2) : 0;
            float *want = malloc(src->nbytes);
            model_permute_rows(want, src->data, src->shape[0], sizeof(float) * (size_t)src->shape[1], nh, true);
            CHECK_MSG(memcmp(want, t->data, t->nbytes) == 0, "%s rows not permuted with n=%d", name, nh);
            /* an independent check of the rule: gguf row h*hd + 2i + j = hf row h*hd + j*hd/2 + i */
            const int64_t rows = src->shape[0], hd = rows / nh, r = src->shape[1];
            const float *g_rows = t->data, *h_rows = src->data;
            CHECK(memcmp(g_rows + (size_t)1 * r, h_rows + (size_t)(hd / 2) * r, sizeof(float) * (size_t)r) == 0);
            CHECK(memcmp(g_rows + (size_t)(hd + 2) * r, h_rows + (size_t)(hd + 1) * r, sizeof(float) * (size_t)r) == 0);
            free(want);
            n_perm++;
        } else {
            CHECK_MSG(memcmp(src->data, t->data, t->nbytes) == 0, "%s differs from %s", name, key);
        }
    }
    CHECK_EQ_INT(n_perm, 4);   /* attn_q, attn_k lora_b in 2 layers */
out:
    gguf_close(g);
    st_close(st);
    adapter_free(a);
    unload(&l);
}

static void gguf_lora_export_matches_llama_cpp_layout(void) {
    char *text = NULL;
    size_t len = 0;
    peft_err err = {0};
    if (!peft_file_exists(LFIX "llama_all/gguf_lora.json")) TEST_FAIL("committed gguf_lora.json fixture missing");
    CHECK_OK(peft_read_file(LFIX "llama_all/gguf_lora.json", &text, &len, &err));
    cJSON *spec = cJSON_Parse(text);
    free(text);
    CHECK(spec != NULL);
    if (!spec) return;
    char tmp[64], out1[128], out2[128];
    make_tmp(tmp, sizeof tmp);
    snprintf(out1, sizeof out1, "%s/from_hf.gguf", tmp);
    snprintf(out2, sizeof out2, "%s/from_gguf.gguf", tmp);
    export_check_layout(MFIX "tiny-llama", out1, spec);
    export_check_layout(MFIX "tiny-llama.f32.gguf", out2, spec);
    cJSON_Delete(spec);
    if (has_python_module("gguf")) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd,
                 "python3 -c \"\nimport gguf\nr = gguf.GGUFReader('%s')\n"
                 "f = r.get_field('general.type'); assert f.contents() == 'adapter', f.contents()\n"
                 "assert abs(r.get_field('adapter.lora.alpha').contents() - 8.0) < 1e-6\n"
                 "t = {x.name: x for x in r.tensors}\nassert len(t) == 28\n"
                 "q = t['blk.0.attn_q.weight.lora_a']; assert list(q.shape) == [64, 4] and q.tensor_type.name == 'F32'\n"
                 "assert list(t['blk.1.attn_k.weight.lora_b'].shape) == [4, 32]\n\" 2>&1",
                 out1);
        CHECK_MSG(system(cmd) == 0, "gguf-py could not read %s", out1);
    } else {
        printf("    (python gguf not available: gguf-py check skipped)\n");
    }
    test_rm_rf(tmp);
}

/* The exported LoRA applied to the GGUF base (as llama.cpp would:
 * W + alpha/r · lora_b·lora_a, in GGUF row order) equals our merged GGUF. */
static void gguf_lora_export_agrees_with_merge(void) {
    if (!peft_file_exists(LFIX "llama_all/adapter/adapter_config.json")) TEST_FAIL("committed LoRA fixtures missing (tools/make_lora_fixtures.py)");
    char tmp[64], lp[128], mp[128];
    make_tmp(tmp, sizeof tmp);
    snprintf(lp, sizeof lp, "%s/lora.gguf", tmp);
    snprintf(mp, sizeof mp, "%s/merged.gguf", tmp);
    const char *cases_[2] = {"llama_all", "llama_qv_rslora"};
    for (int ci = 0; ci < 2; ci++) {
        loaded l = load_model(MFIX "tiny-llama.f32.gguf");
        if (!l.m) { CHECK(0); break; }
        peft_err err = {0};
        adapter *a = NULL;
        char dir[256];
        snprintf(dir, sizeof dir, LFIX "%s/adapter", cases_[ci]);
        CHECK_OK(lora_load(l.m, dir, &a, &err));
        if (a) {
            CHECK_OK(lora_export_gguf(a, l.m, lp, &err));
            CHECK_OK(lora_merge_save(a, l.m, mp, &err));
        }
        gguf_file *lg = NULL, *mg = NULL;
        CHECK_OK(gguf_open(lp, &lg, &err));
        CHECK_OK(gguf_open(mp, &mg, &err));
        if (a && lg && mg) {
            double alpha = 0;
            CHECK_OK(gguf_get_float(lg, "adapter.lora.alpha", &alpha, &err));
            double worst = 0;
            int n = 0;
            for (int i = 0; i < gguf_n_tensors(l.m->gguf); i++) {
                const gguf_tensor *w = gguf_tensor_at(l.m->gguf, i);
                char an[96], bn[96];
                snprintf(an, sizeof an, "%s.lora_a", w->name);
                snprintf(bn, sizeof bn, "%s.lora_b", w->name);
                const gguf_tensor *ta = gguf_find_tensor(lg, an), *tb = gguf_find_tensor(lg, bn);
                const gguf_tensor *tm = gguf_find_tensor(mg, w->name);
                if (!ta || !tb || !tm) continue;
                const int64_t in = w->ne[0], out = w->ne[1], r = ta->ne[1];
                const double s = alpha / (double)tb->ne[0];
                const float *W = w->data, *A = ta->data, *Bm = tb->data, *M = tm->data;
                for (int64_t o = 0; o < out; o++)
                    for (int64_t k = 0; k < in; k++) {
                        double d = 0;
                        for (int64_t q = 0; q < r; q++) d += (double)Bm[o * r + q] * A[q * in + k];
                        worst = fmax(worst, fabs(W[o * in + k] + s * d - M[o * in + k]));
                    }
                n++;
            }
            CHECK_EQ_INT(n, lora_of(a)->n_modules);
            printf("    %-16s llama.cpp-style apply of the exported LoRA vs merged GGUF: %.3g\n", cases_[ci], worst);
            CHECK(worst <= 1e-5);
        }
        gguf_close(lg);
        gguf_close(mg);
        adapter_free(a);
        unload(&l);
    }
    test_rm_rf(tmp);
}

/* GPT-2: c_attn and the two c_proj export as attn_qkv / attn_output /
 * ffn_down; Phi-3's fused qkv_proj as attn_qkv; none permuted (Qwen2,
 * Qwen3, Gemma 2 and Phi-3 run NEOX RoPE in llama.cpp), with shapes
 * matching the GGUF base as llama.cpp's loader checks them. */
static void gguf_lora_export_gpt2_and_qwen2(void) {
    if (!peft_file_exists(LFIX "gpt2_all/adapter/adapter_config.json")) TEST_FAIL("committed LoRA fixtures missing (tools/make_lora_fixtures.py)");
    static const lcase more[] = {
        {"qwen3_qv", MFIX "tiny-qwen3", MFIX "tiny-qwen3.f32.gguf", NULL, 4, 2, 2.0, 0, 0},
        {"phi3_qkv", MFIX "tiny-phi3", MFIX "tiny-phi3.f32.gguf", NULL, 2, 2, 2.0, 0, 0},
        {"gemma2_qv", MFIX "tiny-gemma2", MFIX "tiny-gemma2.f32.gguf", NULL, 4, 2, 2.0, 0, 0},
    };
    const lcase *cs[5] = {&cases[2], &cases[3], &more[0], &more[1], &more[2]};
    for (int ci = 0; ci < 5; ci++) {
        char tmp[64], out[128], dir[256];
        make_tmp(tmp, sizeof tmp);
        snprintf(out, sizeof out, "%s/lora.gguf", tmp);
        snprintf(dir, sizeof dir, LFIX "%s/adapter", cs[ci]->name);
        loaded l = load_model(cs[ci]->model);
        peft_err err = {0};
        adapter *a = NULL;
        gguf_file *g = NULL, *base = NULL;
        if (l.m) CHECK_OK(lora_load(l.m, dir, &a, &err));
        if (a) CHECK_OK(lora_export_gguf(a, l.m, out, &err));
        CHECK_OK(gguf_open(out, &g, &err));
        CHECK_OK(gguf_open(cs[ci]->gguf, &base, &err));
        if (g && base && a) {
            CHECK(strcmp(gguf_get_str(g, "general.architecture"), gguf_get_str(base, "general.architecture")) == 0);
            CHECK_EQ_INT(gguf_n_tensors(g), 2 * lora_of(a)->n_modules);
            for (int i = 0; i < lora_of(a)->n_modules; i++) {
                const lora_module *md = &lora_of(a)->mods[i];
                char bn[96], n[128];
                lora_gguf_weight_name(l.m, md->layer, md->role, bn, sizeof bn);
                const gguf_tensor *w = gguf_find_tensor(base, bn);
                snprintf(n, sizeof n, "%s.lora_a", bn);
                const gguf_tensor *ta = gguf_find_tensor(g, n);
                snprintf(n, sizeof n, "%s.lora_b", bn);
                const gguf_tensor *tb = gguf_find_tensor(g, n);
                CHECK_MSG(w && ta && tb, "%s", bn);
                if (!w || !ta || !tb) continue;
                /* llama.cpp's checks */
                CHECK(w->ne[0] == ta->ne[0] && w->ne[1] == tb->ne[1] && ta->ne[1] == tb->ne[0]);
                CHECK(memcmp(tb->data, md->B, tb->nbytes) == 0);   /* no permutation */
                CHECK(memcmp(ta->data, md->A, ta->nbytes) == 0);
            }
        }
        gguf_close(g);
        gguf_close(base);
        adapter_free(a);
        unload(&l);
        test_rm_rf(tmp);
    }
}

int main(void) {
    TEST_RUN(parse_targets_llama);
    TEST_RUN(parse_targets_gpt2_c_proj_is_both);
    TEST_RUN(init_statistics_match_hf);
    TEST_RUN(save_load_round_trip_is_bit_exact);
    TEST_RUN(gguf_base_saves_hf_names);
    TEST_RUN(peft_adapters_load);
    TEST_RUN(half_precision_adapters_load);
    TEST_RUN(mismatched_adapters_fail_clearly);
    TEST_RUN(merged_hf_folders_match_peft);
    TEST_RUN(merged_gguf_matches_peft);
    TEST_RUN(merged_q8_0_gguf_keeps_types);
    TEST_RUN(merge_refuses_to_overwrite_base);
    TEST_RUN(gguf_lora_export_matches_llama_cpp_layout);
    TEST_RUN(gguf_lora_export_agrees_with_merge);
    TEST_RUN(gguf_lora_export_gpt2_and_qwen2);
    TEST_MAIN_END();
}
