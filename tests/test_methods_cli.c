/* test_methods_cli.c — the one interface over every method: `peft train
 * --method M` with its options, a classification run with accuracy in
 * `peft eval`, generate/eval/merge telling the method from the saved
 * config, and the clear errors issue 4 asks for (unknown method, an option
 * of another method, virtual tokens past the context, merging what cannot
 * be merged, a method the base cannot take). */
#include "core/core.h"
#include "peft/method.h"
#include "test.h"

#include <math.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GPT2 "tests/fixtures/models/tiny-gpt2"
#define LLAMA "tests/fixtures/models/tiny-llama"

static char dir[256];
static char out[1 << 16];

static void make_data(void) {
    snprintf(dir, sizeof dir, "/tmp/peft_mcli_XXXXXX");
    if (!mkdtemp(dir)) return;
    char p[512], line[256];
    snprintf(p, sizeof p, "%s/pc.jsonl", dir);
    FILE *f = fopen(p, "w");
    for (int i = 0; f && i < 24; i++) {
        snprintf(line, sizeof line, "{\"prompt\": \"name[Place %d], food[%s]\\n\", \"completion\": \"Place %d serves %s food.\"}\n",
                 i, i % 2 ? "Italian" : "French", i, i % 2 ? "Italian" : "French");
        fputs(line, f);
    }
    if (f) fclose(f);
    snprintf(p, sizeof p, "%s/cls.jsonl", dir);
    f = fopen(p, "w");
    for (int i = 0; f && i < 32; i++) {
        snprintf(line, sizeof line, "{\"text\": \"%s movie number %d\", \"label\": %d}\n", i % 3 ? "a fine" : "a dull", i, i % 3 ? 1 : 0);
        fputs(line, f);
    }
    if (f) fclose(f);
}

static void every_method_trains_and_reloads_through_the_cli(void) {
    static const char *methods[] = {"lora", "dora", "adapter-pfeiffer", "adapter-houlsby", "prompt", "prefix", "ia3", "bitfit", "full", "adalora"};
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++) {
        char args[2048];
        snprintf(args, sizeof args,
                 "train --model " GPT2 " --data %s/pc.jsonl --val-split 0.25 --method %s --steps 4 --batch 2 --seq 48 --lr 1e-3 "
                 "--out %s/run_%s --quiet --threads 1",
                 dir, methods[i], dir, methods[i]);
        int rc = test_run_cli(args, out, sizeof out);
        CHECK_MSG(rc == 0, "%s: exit %d\n%s", methods[i], rc, out);
        CHECK_MSG(strstr(out, "trainable params: "), "%s: no trainable params line", methods[i]);
        /* the saved adapter (or model) evaluates to the run's final validation loss */
        const char *vl = strstr(out, "validation ");
        double after = NAN;
        if (vl) {
            const char *arrow = strstr(vl, "-> ");
            if (arrow) after = atof(arrow + 3);
        }
        if (!strcmp(methods[i], "full"))
            snprintf(args, sizeof args, "eval --model %s/run_full --data %s/pc.jsonl --seq 48 --json --threads 1", dir, dir);
        else
            snprintf(args, sizeof args, "eval --model " GPT2 " --adapter %s/run_%s --data %s/pc.jsonl --seq 48 --json --threads 1",
                     dir, methods[i], dir);
        rc = test_run_cli(args, out, sizeof out);
        CHECK_MSG(rc == 0 && strstr(out, "\"loss\""), "%s: eval exit %d\n%s", methods[i], rc, out);
        printf("    %-17s trained 4 steps, validation loss %.4f; eval of the saved result: %s", methods[i], after,
               strstr(out, "\"loss\"") ? strstr(out, "\"loss\"") : "\n");
        /* generation with the adapter */
        if (strcmp(methods[i], "full")) {
            snprintf(args, sizeof args, "generate --model " GPT2 " --adapter %s/run_%s --prompt 'name[' --max-tokens 4 --threads 1",
                     dir, methods[i]);
            rc = test_run_cli(args, out, sizeof out);
            CHECK_MSG(rc == 0, "%s: generate exit %d\n%s", methods[i], rc, out);
        }
    }
}

static void classification_reports_accuracy(void) {
    char args[2048];
    snprintf(args, sizeof args,
             "train --model " LLAMA " --data %s/cls.jsonl --val-split 0.25 --method prompt --num-virtual-tokens 4 "
             "--prompt-init 'Classify the review:' --steps 6 --batch 4 --seq 32 --lr 1e-2 --out %s/cls_prompt --quiet --threads 1",
             dir, dir);
    int rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0 && strstr(out, "2-label classification head") && strstr(out, "accuracy"), "exit %d\n%s", rc, out);
    snprintf(args, sizeof args, "eval --model " LLAMA " --adapter %s/cls_prompt --data %s/cls.jsonl --json --threads 1", dir, dir);
    rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0 && strstr(out, "\"accuracy\""), "exit %d\n%s", rc, out);
    printf("    prompt tuning + head: %s", out);
    char cfg[512];
    snprintf(cfg, sizeof cfg, "%s/cls_prompt/adapter_config.json", dir);
    size_t n = 0;
    char *js = NULL;
    peft_err err = {0};
    if (!peft_read_file(cfg, &js, &n, &err)) {
        CHECK(strstr(js, "\"PROMPT_TUNING\"") && strstr(js, "\"SEQ_CLS\"") && strstr(js, "\"score\"") && strstr(js, "\"TEXT\""));
        free(js);
    }
    /* classification data without a head */
    snprintf(args, sizeof args, "eval --model " LLAMA " --data %s/cls.jsonl", dir);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "classification head"), "%s", out);
}

static void bad_method_input_fails_before_training(void) {
    struct {
        const char *args, *want;
        int rc;
    } cases[] = {
        {"--method foo", "unknown method \"foo\"", 2},
        {"--method prompt --r 4", "--r does not apply to --method prompt", 2},
        {"--method lora --num-virtual-tokens 4", "--num-virtual-tokens does not apply to --method lora", 2},
        {"--method ia3 --reduction-factor 4", "--reduction-factor does not apply to --method ia3", 2},
        {"--method prefix --pack", "--pack does not apply to --method prefix", 2},
        {"--method dora --dropout 0.1", "--dropout does not apply to --method dora", 2},
        {"--method prompt --num-virtual-tokens 100 --seq 64", "exceeds the model's context 128", 1},
        {"--method adapter-pfeiffer --non-linearity cube", "--non-linearity must be", 2},
        {"--method adapter-houlsby --reduction-factor 128", "leaves no bottleneck", 1},
        {"--method bitfit", "has no bias terms", 1},
        {"--method lora --num-labels 3", "--num-labels needs", 1},
        {"--method ia3 --loraplus-lr-ratio 16", "--loraplus-lr-ratio does not apply to --method ia3", 2},
        {"--method lora --loraplus-lr-ratio -2", "--loraplus-lr-ratio", 2},
        {"--method lokr --dropout 0.1", "--dropout does not apply to --method lokr", 2},
        {"--method lokr --decompose-factor 0", "decompose_factor must be -1", 2},
        {"--method lokr --rank-dropout 1.5", "rank_dropout must be a number in [0, 1]", 2},
        {"--method vera --decompose-both", "--decompose-both does not apply to --method vera", 2},
        /* the owners come from the tables; --use-dora turns lora into dora before the check */
        {"--method ia3 --rslora", "--rslora does not apply to --method ia3 (it is an option of lora, dora)", 2},
        {"--use-dora --dropout 0.1", "--dropout does not apply to --method dora (it is an option of lora, vera, adalora)", 2},
        {"--method prompt --target q_proj", "--target does not apply to --method prompt (it is an option of lora, dora, ia3", 2},
        {"--init uniform", "init must be kaiming or gaussian", 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char args[2048];
        snprintf(args, sizeof args, "train --model " LLAMA " --data %s/pc.jsonl --steps 2 --out %s/bad%zu %s", dir, dir, i,
                 cases[i].args);
        int rc = test_run_cli(args, out, sizeof out);
        CHECK_MSG(rc == cases[i].rc && strstr(out, cases[i].want), "%s: exit %d\n%s", cases[i].args, rc, out);
        CHECK_MSG(!strstr(out, "step 1/"), "%s: training started", cases[i].args);
        char *nl = strrchr(out, '\n');
        if (nl && nl[1] == 0) *nl = 0;
        printf("    %-44s -> %s\n", cases[i].args, strrchr(out, '\n') ? strrchr(out, '\n') + 1 : out);
    }
}

/* --help lists every method's options from the registry, one entry per
 * option naming its owners, and every method. */
static void train_help_comes_from_the_tables(void) {
    int rc = test_run_cli("train --help", out, sizeof out);
    CHECK_EQ_INT(rc, 0);
    for (const method_ops *const *p = method_registry(); *p; p++) {
        char want[64];
        snprintf(want, sizeof want, "  %-16s ", (*p)->name);
        CHECK_MSG(strstr(out, want), "--help does not list method %s", (*p)->name);
        for (const method_option *o = (*p)->options; o && o->name; o++) {
            snprintf(want, sizeof want, "  --%s ", o->name);
            const char *at = strstr(out, want);
            CHECK_MSG(at && !strstr(at + 1, want), "--%s (of %s) is not listed once", o->name, (*p)->name);
        }
    }
    CHECK_MSG(strstr(out, "[lora, dora, loha, lokr] rank (default 8); [vera] rank (default 256)"), "%s", out);
}

static void merge_tells_the_method_from_the_config(void) {
    char args[2048];
    /* IA3 merges; prefix tuning refuses; DoRA does not export to llama.cpp */
    snprintf(args, sizeof args, "merge --model " GPT2 " --adapter %s/run_ia3 --out %s/merged_ia3", dir, dir);
    int rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0 && strstr(out, "ia3"), "exit %d\n%s", rc, out);
    snprintf(args, sizeof args, "merge --model " GPT2 " --adapter %s/run_prefix --out %s/merged_prefix", dir, dir);
    rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 1 && strstr(out, "cannot be merged"), "exit %d\n%s", rc, out);
    snprintf(args, sizeof args, "export --model " GPT2 " --adapter %s/run_dora --format gguf --out %s/dora.gguf", dir, dir);
    rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 1 && strstr(out, "plain LoRA only"), "exit %d\n%s", rc, out);
    /* a full fine-tuning folder is a model, not an adapter */
    snprintf(args, sizeof args, "eval --model " GPT2 " --adapter %s/run_full --data %s/pc.jsonl", dir, dir);
    rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 1 && strstr(out, "model folder"), "exit %d\n%s", rc, out);
    /* an adapter for another architecture */
    snprintf(args, sizeof args, "eval --model " LLAMA " --adapter %s/run_adapter-pfeiffer --data %s/pc.jsonl", dir, dir);
    rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 1 && strstr(out, "adapter_model.safetensors"), "exit %d\n%s", rc, out);
    printf("    pfeiffer adapter of gpt2 on llama: %s", out);
}

static double eval_loss(const char *args) {
    if (test_run_cli(args, out, sizeof out) != 0) return NAN;
    const char *l = strstr(out, "\"loss\"");
    return l ? atof(l + 7) : NAN;
}

/* LoHa through the CLI: HF's defaults (r 8, alpha 8) when --r / --alpha are
 * not given, its options into adapter_config.json, eval / generate / merge
 * from the saved folder (the merged model evaluates to the adapter's loss),
 * and GPT-2 (Conv1D) and --dropout refused before training. */
static void loha_through_the_cli(void) {
    char args[2048], p[600];
    snprintf(args, sizeof args,
             "train --model " LLAMA " --data %s/pc.jsonl --method loha --steps 2 --batch 2 --seq 48 --out %s/loha_def "
             "--quiet --threads 1", dir, dir);
    int rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0, "exit %d\n%s", rc, out);
    snprintf(p, sizeof p, "%s/loha_def/adapter_config.json", dir);
    char *cfg = NULL;
    size_t len = 0;
    peft_err err = {0};
    CHECK_OK(peft_read_file(p, &cfg, &len, &err));
    CHECK_MSG(cfg && strstr(cfg, "\"r\":\t8,") && strstr(cfg, "\"alpha\":\t8,") && strstr(cfg, "\"LOHA\""), "%s",
              cfg ? cfg : err.msg);
    free(cfg);
    snprintf(args, sizeof args,
             "train --model " LLAMA " --data %s/pc.jsonl --method loha --r 4 --alpha 16 --target q_proj,v_proj,down_proj "
             "--rank-dropout 0.2 --module-dropout 0.1 --steps 4 --batch 2 --seq 48 --lr 1e-2 --out %s/loha --quiet --threads 1",
             dir, dir);
    rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0, "exit %d\n%s", rc, out);
    snprintf(p, sizeof p, "%s/loha/adapter_config.json", dir);
    cfg = NULL;
    CHECK_OK(peft_read_file(p, &cfg, &len, &err));
    CHECK_MSG(cfg && strstr(cfg, "\"r\":\t4,") && strstr(cfg, "\"alpha\":\t16,") && strstr(cfg, "\"rank_dropout\":\t0.2") &&
                  strstr(cfg, "\"module_dropout\":\t0.1") && strstr(cfg, "down_proj"),
              "%s", cfg ? cfg : err.msg);
    free(cfg);
    snprintf(args, sizeof args, "eval --model " LLAMA " --adapter %s/loha --data %s/pc.jsonl --seq 48 --json --threads 1", dir,
             dir);
    const double la = eval_loss(args);
    CHECK_MSG(isfinite(la), "eval: %s", out);
    snprintf(args, sizeof args, "generate --model " LLAMA " --adapter %s/loha --prompt 'name[' --max-tokens 4 --threads 1", dir);
    rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0, "generate exit %d\n%s", rc, out);
    snprintf(args, sizeof args, "merge --model " LLAMA " --adapter %s/loha --out %s/loha_merged", dir, dir);
    rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0 && strstr(out, "loha"), "merge exit %d\n%s", rc, out);
    snprintf(args, sizeof args, "eval --model %s/loha_merged --data %s/pc.jsonl --seq 48 --json --threads 1", dir, dir);
    const double lm = eval_loss(args);
    CHECK_MSG(fabs(lm - la) <= 1e-4 * fabs(la), "merged model loss %.6f vs adapter %.6f", lm, la);
    printf("    loha r 4 alpha 16, rank/module dropout: eval %.6f, merged model %.6f\n", la, lm);
    static const struct { const char *args, *want; int rc; } bad[] = {
        {"--model " GPT2 " --method loha", "Conv1D", 1},
        {"--model " LLAMA " --method loha --dropout 0.1", "--dropout does not apply to --method loha", 2},
        {"--model " LLAMA " --method loha --rank-dropout 1.5", "rank_dropout", 2},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(args, sizeof args, "train %s --data %s/pc.jsonl --steps 2 --out %s/loha_bad%zu", bad[i].args, dir, dir, i);
        rc = test_run_cli(args, out, sizeof out);
        CHECK_MSG(rc == bad[i].rc && strstr(out, bad[i].want) && !strstr(out, "step 1/"), "%s: exit %d\n%s", bad[i].args, rc,
                  out);
        char *nl = strrchr(out, '\n');
        if (nl && nl[1] == 0) *nl = 0;
        printf("    %-62s -> %s\n", bad[i].args, strrchr(out, '\n') ? strrchr(out, '\n') + 1 : out);
    }
}

/* Resuming reproduces an uninterrupted run also for methods whose adapter
 * file does not hold every trained value (a prefix projection's MLP) or
 * that derive values from the parameters (DoRA's norms). */
static void resume_is_exact_for_every_kind_of_state(void) {
    static const char *methods[] = {"prefix --prefix-projection --encoder-hidden-size 16", "dora", "adapter-houlsby",
                                    "dora --loraplus-lr-ratio 16 --weight-decay 0.1",
                                    "loha --rank-dropout 0.3 --module-dropout 0.2"};
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++) {
        char args[2048], a_dir[300], b_dir[300];
        snprintf(a_dir, sizeof a_dir, "%s/res_a%zu", dir, i);
        snprintf(b_dir, sizeof b_dir, "%s/res_b%zu", dir, i);
        const char *common = "--steps 6 --save-every 3 --batch 2 --seq 48 --lr 1e-2 --quiet --threads 1";
        snprintf(args, sizeof args, "train --model " LLAMA " --data %s/pc.jsonl --method %s %s --out %s", dir, methods[i], common,
                 a_dir);
        CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
        /* B: the state A had after step 3 (checkpoint-3 + LATEST), then resumed */
        snprintf(args, sizeof args, "mkdir -p %s && cp -r %s/checkpoint-3 %s/LATEST %s/", b_dir, a_dir, a_dir, b_dir);
        CHECK_EQ_INT(system(args), 0);
        snprintf(args, sizeof args, "train --model " LLAMA " --data %s/pc.jsonl --method %s %s --out %s --resume %s", dir,
                 methods[i], common, b_dir, b_dir);
        int rc = test_run_cli(args, out, sizeof out);
        CHECK_MSG(rc == 0, "%s: resume exit %d\n%s", methods[i], rc, out);
        snprintf(args, sizeof args, "cmp -s %s/adapter_model.safetensors %s/adapter_model.safetensors", a_dir, b_dir);
        CHECK_MSG(system(args) == 0, "%s: the resumed adapter differs from the uninterrupted one", methods[i]);
        printf("    %-52s resumed at step 3: final adapter byte-identical\n", methods[i]);
    }
}

/* LoKr through the CLI: its options reach the adapter, HF's defaults (r 8,
 * alpha 8) apply when --r / --alpha are not given, eval / generate / merge
 * read it back; GPT-2 is refused. */
static void lokr_trains_evaluates_and_merges(void) {
    char args[2048];
    snprintf(args, sizeof args,
             "train --model " LLAMA " --data %s/pc.jsonl --val-split 0.25 --method lokr --target q_proj,v_proj,down_proj "
             "--decompose-both --decompose-factor 16 --steps 4 --batch 2 --seq 48 --lr 1e-2 --out %s/run_lokr --quiet --threads 1",
             dir, dir);
    int rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0 && strstr(out, "lokr: r=8 alpha=8"), "exit %d\n%s", rc, out);
    char cfg[512];
    snprintf(cfg, sizeof cfg, "%s/run_lokr/adapter_config.json", dir);
    size_t n = 0;
    char *js = NULL;
    peft_err err = {0};
    CHECK_OK(peft_read_file(cfg, &js, &n, &err));
    if (js) {
        cJSON *o = cJSON_ParseWithLength(js, n);
        const cJSON *pt = cJSON_GetObjectItemCaseSensitive(o, "peft_type");
        CHECK_MSG(cJSON_IsString(pt) && !strcmp(pt->valuestring, "LOKR") &&
                      cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "decompose_both")) &&
                      cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(o, "decompose_factor")) == 16 &&
                      cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(o, "r")) == 8 &&
                      cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(o, "alpha")) == 8,
                  "%s", js);
        cJSON_Delete(o);
        free(js);
    }
    snprintf(args, sizeof args, "eval --model " LLAMA " --adapter %s/run_lokr --data %s/pc.jsonl --seq 48 --json --threads 1", dir,
             dir);
    rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0 && strstr(out, "\"loss\""), "eval exit %d\n%s", rc, out);
    printf("    lokr: eval of the saved adapter: %s", out);
    snprintf(args, sizeof args, "generate --model " LLAMA " --adapter %s/run_lokr --prompt 'name[' --max-tokens 4 --threads 1", dir);
    rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0, "generate exit %d\n%s", rc, out);
    snprintf(args, sizeof args, "merge --model " LLAMA " --adapter %s/run_lokr --out %s/merged_lokr", dir, dir);
    rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0 && strstr(out, "lokr"), "merge exit %d\n%s", rc, out);
    snprintf(args, sizeof args, "train --model " GPT2 " --data %s/pc.jsonl --method lokr --steps 2 --out %s/lokr_gpt2", dir, dir);
    rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 1 && strstr(out, "Conv1D") && !strstr(out, "step 1/"), "gpt2: exit %d\n%s", rc, out);
    printf("    lokr on gpt2: %s", out);
}

int main(void) {
    if (!getenv("PEFT_CLI")) { fprintf(stderr, "PEFT_CLI is not set\n"); return 1; }
    make_data();
    TEST_RUN(every_method_trains_and_reloads_through_the_cli);
    TEST_RUN(classification_reports_accuracy);
    TEST_RUN(bad_method_input_fails_before_training);
    TEST_RUN(train_help_comes_from_the_tables);
    TEST_RUN(merge_tells_the_method_from_the_config);
    TEST_RUN(loha_through_the_cli);
    TEST_RUN(lokr_trains_evaluates_and_merges);
    TEST_RUN(resume_is_exact_for_every_kind_of_state);
    test_rm_rf(dir);
    TEST_MAIN_END();
}
