/* test_api_tools.c — peft.h's "training runs and tooling" section, through
 * the public header only (as the CLI uses it): the method registry and
 * adapters built option by option, files, datasets, the memory plan,
 * training with progress on loaded data, evaluation, the combine / merge
 * option checks and the embedding pipeline. */
#include "peft.h"
#include "test.h"

#define MFIX "tests/fixtures/models/"

static void registry_and_config(void) {
    const int n = peft_method_count(), lora = peft_method_find("lora"), dora = peft_method_find("dora");
    CHECK(n >= 10);
    CHECK(lora >= 0 && dora >= 0 && lora != dora);
    CHECK(peft_method_find("no-such-method") == -1);
    peft_method_info in;
    CHECK(peft_method_get(lora, &in) == 0 && !strcmp(in.name, "lora") && in.n_options > 0 && !in.saves_model);
    const int n_opts = in.n_options;
    CHECK(peft_method_get(n, &in) == PEFT_ERR_INVALID && !in.name);
    peft_method_option o;
    CHECK(peft_method_get_option(lora, 0, &o) == 0 && o.name && o.help);
    CHECK(peft_method_get_option(lora, n_opts, &o) == PEFT_ERR_INVALID && !o.name);
    CHECK(peft_method_has_option(lora, "use-dora") && peft_method_has_option(lora, "use_dora"));
    CHECK(!peft_method_has_option(lora, "reduction-factor"));
    CHECK(peft_method_option_is_field("r") && !peft_method_option_is_field("use-dora"));
    int prompt = peft_method_find("prompt");
    CHECK(prompt >= 0 && peft_method_get(prompt, &in) == 0 && in.prompt_learning);

    /* LoRA with use_dora resolves to DoRA */
    peft_adapter_config c;
    peft_adapter_config_init(&c, lora);
    CHECK(isnan(c.alpha) && c.r == 0);
    peft_error e = {0};
    CHECK(peft_adapter_config_add(&c, "use_dora", "true", &e) == 0);
    CHECK(peft_adapter_config_resolve(&c) == dora);
    c.method = dora;
    CHECK(peft_adapter_config_check(&c, &e) == 0);
    /* an option that does not fit is refused with a message */
    char big[1100];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CHECK(peft_adapter_config_add(&c, "init", big, &e) == PEFT_ERR_INVALID && e.status == PEFT_ERR_INVALID &&
          strstr(e.msg, "too long"));
}

static void files(void) {
    char dir[] = "/tmp/peft_api_tools_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char p[256];
    snprintf(p, sizeof p, "%s/f.txt", dir);
    peft_error e = {0};
    CHECK(peft_file_write_atomic(p, "abc\0def", 7, &e) == 0);
    char *d = NULL;
    size_t len = 0;
    CHECK(peft_file_read(p, &d, &len, &e) == 0 && len == 7 && !memcmp(d, "abc\0def", 7) && d[7] == '\0');
    free(d);
    snprintf(p, sizeof p, "%s/missing", dir);
    CHECK(peft_file_read(p, &d, &len, &e) == PEFT_ERR_IO && strstr(e.msg, "missing"));
    CHECK(peft_max_line_bytes() >= 1u << 20 && peft_max_labels() >= 2);
    CHECK(peft_combine_type_check("dare_ties_svd", &e) == 0);
    CHECK(peft_combine_type_check("average", &e) == PEFT_ERR_INVALID && strstr(e.msg, "average"));
    CHECK(peft_merge_outtype_check("F16", &e) == 0 && peft_merge_outtype_check("q4_0", &e) == 0);
    CHECK(peft_merge_outtype_check("q3_k", &e) == PEFT_ERR_INVALID);
}

static int n_progress, n_eval;
static void on_progress(const peft_train_progress *p, void *user) {
    (void)user;
    if (p->is_eval) n_eval++;
    else if (p->step >= 1 && p->step <= p->total_steps && isfinite(p->loss)) n_progress++;
}

static void train_on_datasets(void) {
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, MFIX "tiny-llama");
    CHECK(m != NULL);
    if (!m) { peft_free(ctx); return; }
    CHECK(peft_model_has_tokenizer(m));
    peft_model_info mi;
    peft_model_get_info(m, &mi);

    peft_dataset *d = peft_dataset_load(m, "tests/fixtures/data/pc.jsonl", 64, 0);
    CHECK_MSG(d != NULL, "%s", peft_last_error(ctx));
    CHECK(peft_dataset_load(m, "tests/fixtures/data/no-such.jsonl", 64, 0) == NULL &&
          strstr(peft_last_error(ctx), "no-such.jsonl"));
    if (!d) { peft_model_free(m); peft_free(ctx); return; }
    peft_dataset_info di;
    peft_dataset_get_info(d, &di);
    CHECK(di.kind == PEFT_DATA_PROMPT_COMPLETION && di.n > 0 && di.n_tokens >= di.n_loss_tokens && di.n_loss_tokens > 0);

    CHECK(peft_model_check_targets(m, "q_proj,v_proj") == 0);
    CHECK(peft_model_check_targets(m, "c_attn") != 0 && strstr(peft_last_error(ctx), "c_attn"));
    peft_adapter_config c;
    peft_adapter_config_init(&c, peft_method_find("lora"));
    c.r = 4;
    c.targets = "q_proj,v_proj";
    c.seed = 7;
    peft_adapter *a = peft_adapter_new_config(m, &c, "/base/of/test");
    CHECK_MSG(a != NULL, "%s", peft_last_error(ctx));
    if (!a) { peft_dataset_free(d); peft_model_free(m); peft_free(ctx); return; }
    peft_lora_info li;
    CHECK(peft_adapter_lora_info(a, &li) == 0 && li.r == 4 && li.n_modules == 2 * mi.n_layer && li.scale == 4.0f);
    char desc[128];
    peft_adapter_describe(a, desc, sizeof desc);
    CHECK(desc[0] != '\0');
    CHECK(peft_adapter_virtual_tokens(a) == 0 && peft_adapter_virtual_tokens(NULL) == 0);
    CHECK(peft_adapter_num_labels(a, m) == 0);

    peft_train_params tp = peft_train_default_params();
    tp.batch = 2;
    tp.seq = 64;
    tp.steps = 2;
    tp.lr = 1e-3f;
    peft_memory_plan p0, p1;
    CHECK(peft_train_plan(m, a, d, NULL, &tp, 0, &p0) == 0);
    CHECK(peft_train_plan(m, a, d, NULL, &tp, 1, &p1) == 0);
    CHECK(p0.peak == p0.base + p0.weights + p0.grads + p0.optimizer + p0.eval_graph + p0.graph_total);
    CHECK(p0.graph_total == p0.graph_layers + p0.graph_hooks + p0.graph_shared);
    CHECK(mi.n_layer < 2 || p1.graph_layers < p0.graph_layers);
    int ck = -1;
    peft_memory_plan pf;
    CHECK(peft_train_fit(m, a, d, NULL, &tp, (size_t)1 << 40, &ck, &pf) == 0 && ck == 0);
    CHECK(peft_train_fit(m, a, d, NULL, &tp, 1024, &ck, &pf) == PEFT_ERR_NOMEM);

    char dir[] = "/tmp/peft_api_train_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    tp.out_dir = dir;
    peft_train_hooks h = {.progress = on_progress};
    peft_train_report r;
    n_progress = n_eval = 0;
    CHECK_MSG(peft_train_dataset(m, a, d, NULL, &tp, &h, &r) == 0, "%s", peft_last_error(ctx));
    CHECK(r.steps == 2 && n_progress >= 2 && isfinite(r.first_loss) && isfinite(r.last_loss) && r.graph_bytes > 0);
    CHECK(isnan(r.val_loss_after) && r.checkpoint_every == 0);
    char cfg[300];
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
    char *text = NULL;
    CHECK(peft_file_read(cfg, &text, NULL, NULL) == 0 && text && strstr(text, "/base/of/test"));
    free(text);

    double loss = NAN, acc = 0;
    int64_t n = 0;
    CHECK(peft_eval_dataset(m, a, d, 2, 64, NULL, &loss, &n, &acc) == 0 && isfinite(loss) && n == di.n_loss_tokens &&
          isnan(acc));
    CHECK(peft_model_embed_info(m, &(peft_embed_info){0}) == PEFT_ERR_UNSUPPORTED);
    peft_adapter_free(a);
    peft_dataset_free(d);
    peft_model_free(m);
    peft_free(ctx);
}

static void embed_pipeline(void) {
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, MFIX "tiny-bert");
    CHECK(m != NULL);
    if (!m) { peft_free(ctx); return; }
    peft_embed_info in;
    CHECK(peft_model_embed_info(m, &in) == 0 && in.dim == peft_model_embed_dim(m) && in.pooling && in.max_seq_length > 0);
    /* one pipeline for many texts, with lengths: the same as NUL-terminated texts */
    const char *texts[2] = {"a cat sat", "hello world, again"};
    float *a = calloc(2 * (size_t)in.dim, sizeof *a), *b = calloc(2 * (size_t)in.dim, sizeof *b);
    peft_embedder *e = peft_embedder_new(m);
    CHECK(e != NULL);
    if (e) {
        peft_embed_info ei;
        peft_embedder_info(e, &ei);
        CHECK(ei.dim == in.dim && ei.pooling == in.pooling && !strcmp(ei.source, in.source));
        for (int i = 0; i < 2; i++) CHECK(peft_embedder_text(e, texts[i], strlen(texts[i]), a + (size_t)i * in.dim) == 0);
        /* a length shorter than the string: only that prefix is embedded */
        float *c = calloc((size_t)in.dim, sizeof *c);
        CHECK(peft_embedder_text(e, "a cat sat on the mat", strlen(texts[0]), c) == 0);
        CHECK(!memcmp(a, c, (size_t)in.dim * sizeof *c));
        free(c);
        peft_embedder_free(e);
    }
    CHECK(peft_model_embed(m, texts, 2, b) == 0);
    CHECK(!memcmp(a, b, 2 * (size_t)in.dim * sizeof *a));
    free(a);
    free(b);
    peft_model_free(m);
    peft_free(ctx);
}

int main(void) {
    TEST_RUN(registry_and_config);
    TEST_RUN(files);
    TEST_RUN(train_on_datasets);
    TEST_RUN(embed_pipeline);
    TEST_MAIN_END();
}
