/* test_train_cli.c — `peft train` end to end through the CLI: exact resume
 * after kill -9 at random moments (often mid-checkpoint), bad data with file
 * and line, empty data, unwritable output, a non-finite loss that stops the
 * run and leaves the last good checkpoint in place; then `peft eval` and
 * `peft generate --adapter` on the result. */
#include "core/core.h"
#include "peft.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MODEL "tests/fixtures/models/tiny-llama"

static char tmp[256];


static void write_data(const char *path, int n_rows, const char *bad_line_at_3) {
    FILE *f = fopen(path, "w");
    const char *w[] = {"the", "king", "queen", "lord", "night", "day", "love", "sword", "crown", "heart", "fair"};
    peft_rng r;
    peft_rng_seed(&r, 11);
    for (int i = 0; i < n_rows; i++) {
        if (i == 2 && bad_line_at_3) { fprintf(f, "%s\n", bad_line_at_3); continue; }
        fprintf(f, "{\"text\": \"");
        int len = 5 + (int)(peft_rng_u64(&r) % 30);
        for (int k = 0; k < len; k++) fprintf(f, "%s%s", k ? " " : "", w[peft_rng_u64(&r) % 11]);
        fprintf(f, "\"}\n");
    }
    fclose(f);
}

/* Spawns the CLI with args (split on spaces) and SIGKILLs it after `ms`. */
static void run_and_kill(const char *args, int ms) {
    char buf[2048];
    snprintf(buf, sizeof buf, "%s", args);
    char *argv[64];
    int n = 0;
    argv[n++] = (char *)getenv("PEFT_CLI");
    for (char *t = strtok(buf, " "); t && n < 63; t = strtok(NULL, " ")) argv[n++] = t;
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", 1);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
}

static void resume_after_kill_is_exact(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[300], a[300], b[300], args[2048], out[16384];
    snprintf(data, sizeof data, "%s/d.jsonl", tmp);
    write_data(data, 120, NULL);
    snprintf(a, sizeof a, "%s/A", tmp);
    snprintf(b, sizeof b, "%s/B", tmp);
    const char *common = "train --model " MODEL " --steps 40 --batch 4 --seq 64 --lr 3e-3 --warmup 3 --dropout 0.1 "
                         "--target all-linear --save-every 1 --threads 1 --quiet --seed 5 --val-split 0.1 --eval-every 10";
    snprintf(args, sizeof args, "%s --data %s --out %s", common, data, a);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    /* interrupted run: kill at several moments, resume each time */
    peft_rng r;
    peft_rng_seed(&r, (uint64_t)time(NULL));
    int kills = 0;
    for (int attempt = 0; attempt < 12; attempt++) {
        char latest[400];
        snprintf(latest, sizeof latest, "%s/LATEST", b);
        bool have = peft_file_exists(latest);
        snprintf(args, sizeof args, "%s --data %s --out %s%s%s", common, data, b, have ? " --resume " : "", have ? b : "");
        run_and_kill(args, 20 + (int)(peft_rng_u64(&r) % 150));
        kills++;
    }
    char latest[400];
    snprintf(latest, sizeof latest, "%s/LATEST", b);
    bool have = peft_file_exists(latest);
    snprintf(args, sizeof args, "%s --data %s --out %s%s%s", common, data, b, have ? " --resume " : "", have ? b : "");
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    /* identical adapter bytes and identical loss/validation history */
    char pa[400], pb[400];
    snprintf(pa, sizeof pa, "%s/adapter_model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/adapter_model.safetensors", b);
    size_t la = 0, lb = 0;
    char *da = test_read_file(pa, &la), *db = test_read_file(pb, &lb);
    CHECK(da && db && la == lb && memcmp(da, db, la) == 0);
    free(da);
    free(db);
    snprintf(pa, sizeof pa, "%s/metrics.jsonl", a);
    snprintf(pb, sizeof pb, "%s/metrics.jsonl", b);
    da = test_read_file(pa, &la);
    db = test_read_file(pb, &lb);
    int lines = 0, same = 0;
    if (da && db) {
        /* compare step, loss and val_loss of each line (timings differ) */
        char *sa = da, *sb = db, *na, *nb;
        for (; sa && sb && *sa && *sb; sa = na, sb = nb) {
            na = strchr(sa, '\n');
            nb = strchr(sb, '\n');
            if (na) *na++ = 0;
            if (nb) *nb++ = 0;
            cJSON *ja = cJSON_Parse(sa), *jb = cJSON_Parse(sb);
            const char *keys[] = {"step", "loss", "val_loss", "lr", "grad_norm"};
            bool eq = true;
            for (int k = 0; k < 5; k++) {
                const cJSON *x = cJSON_GetObjectItem(ja, keys[k]), *y = cJSON_GetObjectItem(jb, keys[k]);
                if (!x != !y || (x && x->valuedouble != y->valuedouble)) eq = false;
            }
            lines++;
            same += eq;
            cJSON_Delete(ja);
            cJSON_Delete(jb);
        }
    }
    CHECK_MSG(lines >= 44 && same == lines, "%d of %d metric lines identical", same, lines);
    printf("    %d kills; %d metric lines and the final adapter identical to the uninterrupted run\n", kills, lines);
    free(da);
    free(db);
}

static void bad_data_names_file_and_line(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[300], args[1024], out[16384];
    snprintf(data, sizeof data, "%s/bad.jsonl", tmp);
    write_data(data, 20, "{\"text\": \"unterminated");
    snprintf(args, sizeof args, "train --model " MODEL " --data %s --out %s/bad_out --steps 2 --seq 32 --quiet", data, tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "bad.jsonl:3") != NULL, "%s", out);
    /* --skip-bad skips and counts it (another --out: a used one is refused before the data is read) */
    snprintf(args, sizeof args, "train --model " MODEL " --data %s --out %s/skip_out --steps 2 --seq 32 --quiet --skip-bad", data, tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    CHECK_MSG(strstr(out, "1 of 20 rows dropped: 1 malformed") != NULL, "%s", out);
    /* a line without the fields */
    write_data(data, 20, "{\"prompt\": \"x\"}");
    snprintf(args, sizeof args, "train --model " MODEL " --data %s --out %s/bad_out --steps 2 --seq 32 --quiet", data, tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "bad.jsonl:3") != NULL, "%s", out);
    /* empty dataset */
    FILE *f = fopen(data, "w");
    fclose(f);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "bad.jsonl") != NULL, "%s", out);
    /* unknown option, unknown method, unknown target */
    CHECK_EQ_INT(test_run_cli("train --model " MODEL " --data x --out y --frobnicate 1", out, sizeof out), 2);
    CHECK_EQ_INT(test_run_cli("train --model " MODEL " --data x --out y --method bogus", out, sizeof out), 2);
    write_data(data, 20, NULL);
    snprintf(args, sizeof args, "train --model " MODEL " --data %s --out %s/o --target q_prj --quiet", data, tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "q_prj") != NULL, "%s", out);
}

static void unwritable_output_is_an_error(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[300], args[1024], out[16384];
    snprintf(data, sizeof data, "%s/d2.jsonl", tmp);
    write_data(data, 20, NULL);
    snprintf(args, sizeof args, "train --model " MODEL " --data %s --out %s/d2.jsonl/sub --steps 2 --seq 32 --quiet", data, tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "d2.jsonl/sub") != NULL || strstr(out, "d2.jsonl") != NULL, "%s", out);
}

/* Writes NaN into the first element of `tensor` of dir/model.safetensors. */
static void poison(const char *dir, const char *tensor) {
    char p[400];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    size_t len = 0;
    char *d = test_read_file(p, &len);
    if (!d) return;
    uint64_t hl;
    memcpy(&hl, d, 8);
    char *hdr = strndup(d + 8, hl);
    cJSON *j = cJSON_Parse(hdr);
    const cJSON *t = cJSON_GetObjectItem(j, tensor);
    const cJSON *off = cJSON_GetObjectItem(t, "data_offsets");
    if (off) {
        size_t at = 8 + hl + (size_t)cJSON_GetArrayItem(off, 0)->valuedouble;
        float nan = NAN;
        memcpy(d + at, &nan, 4);
        FILE *f = fopen(p, "wb");
        fwrite(d, 1, len, f);
        fclose(f);
    }
    cJSON_Delete(j);
    free(hdr);
    free(d);
}

static void nan_loss_stops_and_keeps_checkpoint(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[300], run_dir[300], bad_model[300], args[2048], out[16384];
    snprintf(data, sizeof data, "%s/d3.jsonl", tmp);
    write_data(data, 40, NULL);
    snprintf(run_dir, sizeof run_dir, "%s/nanrun", tmp);
    /* a copy of the model, trained on, then given a NaN weight: a resume
     * must name the run's model */
    snprintf(bad_model, sizeof bad_model, "%s/nanmodel", tmp);
    snprintf(args, sizeof args, "mkdir -p %s && cp " MODEL "/* %s/", bad_model, bad_model);
    CHECK(system(args) == 0);
    snprintf(args, sizeof args, "train --model %s --data %s --out %s --steps 4 --save-every 2 --seq 64 --quiet", bad_model,
             data, run_dir);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    poison(bad_model, "model.layers.1.mlp.down_proj.weight");
    char latest_before[64] = {0}, p[400];
    snprintf(p, sizeof p, "%s/LATEST", run_dir);
    char *l = test_read_file(p, NULL);
    if (l) snprintf(latest_before, sizeof latest_before, "%s", l);
    free(l);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", run_dir);
    unlink(p);
    snprintf(args, sizeof args, "train --model %s --data %s --out %s --steps 4 --save-every 2 --seq 64 --quiet --resume %s",
             bad_model, data, run_dir, run_dir);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "not finite") != NULL, "%s", out);
    /* nothing was overwritten: same LATEST, its checkpoint loads, no final adapter */
    snprintf(p, sizeof p, "%s/LATEST", run_dir);
    l = test_read_file(p, NULL);
    CHECK(l && strcmp(l, latest_before) == 0);
    free(l);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", run_dir);
    CHECK(!peft_file_exists(p));
    snprintf(p, sizeof p, "%s/checkpoint-2/adapter_model.safetensors", run_dir);
    st_archive *st = NULL;
    peft_err err = {0};
    CHECK_OK(st_open(p, &st, &err));
    if (st) {
        bool finite = true;
        for (int i = 0; i < st_count(st); i++) {
            const st_tensor *t = st_at(st, i);
            for (int64_t k = 0; k < st_numel(t); k++) finite &= isfinite(((const float *)t->data)[k]);
        }
        CHECK(finite);
        st_close(st);
    }
}

static void eval_and_generate_use_the_adapter(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[300], args[2048], out[16384], out2[16384];
    snprintf(data, sizeof data, "%s/d.jsonl", tmp);
    snprintf(args, sizeof args, "eval --model " MODEL " --adapter %s/A --data %s --seq 64 --json", tmp, data);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    snprintf(args, sizeof args, "eval --model " MODEL " --data %s --seq 64 --json", data);
    CHECK_EQ_INT(test_run_cli(args, out2, sizeof out2), 0);
    cJSON *ja = cJSON_Parse(out), *jb = cJSON_Parse(out2);
    const cJSON *la = cJSON_GetObjectItem(ja, "loss"), *lb = cJSON_GetObjectItem(jb, "loss");
    CHECK_MSG(la && lb && la->valuedouble < lb->valuedouble - 0.5, "adapter %s vs base %s", out, out2);
    /* merged into the base, the model gives the adapter's loss */
    snprintf(args, sizeof args, "merge --model " MODEL " --adapter %s/A --out %s/merged", tmp, tmp);
    CHECK_EQ_INT(test_run_cli(args, out2, sizeof out2), 0);
    snprintf(args, sizeof args, "eval --model %s/merged --data %s --seq 64 --json", tmp, data);
    CHECK_EQ_INT(test_run_cli(args, out2, sizeof out2), 0);
    cJSON *jm = cJSON_Parse(out2);
    const cJSON *lm = cJSON_GetObjectItem(jm, "loss");
    CHECK_MSG(la && lm && fabs(la->valuedouble - lm->valuedouble) < 1e-4, "adapter %s vs merged %s", out, out2);
    cJSON_Delete(jm);
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    /* GGUF LoRA export, base taken from adapter_config.json */
    snprintf(args, sizeof args, "export --adapter %s/A --format gguf --out %s/a.gguf", tmp, tmp);
    CHECK_EQ_INT(test_run_cli(args, out2, sizeof out2), 0);
    snprintf(args, sizeof args, "%s/a.gguf", tmp);
    gguf_file *gf = NULL;
    peft_err err = {0};
    CHECK_OK(gguf_open(args, &gf, &err));
    CHECK(gf && gguf_get_str(gf, "general.type") && !strcmp(gguf_get_str(gf, "general.type"), "adapter"));
    CHECK(gf && gguf_find_tensor(gf, "blk.0.attn_q.weight.lora_a") != NULL);
    gguf_close(gf);
    CHECK_EQ_INT(test_run_cli("export --adapter /nonexistent --format gguf", out2, sizeof out2), 1);
    CHECK_EQ_INT(test_run_cli("merge --model " MODEL " --adapter tests/fixtures/lora/gpt2_all/adapter --out /tmp/never", out2, sizeof out2), 1);
    snprintf(args, sizeof args, "generate --model " MODEL " --adapter %s/A --prompt the --max-tokens 8", tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    snprintf(args, sizeof args, "generate --model " MODEL " --adapter tests/fixtures/lora/gpt2_all/adapter --prompt the");
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "adapter") != NULL, "%s", out);
}

/* --config FILE gives the same run as the same options on the command line,
 * and the command line wins over the file. */
/* --compute: a bad value is a usage error; bf16 (where the CPU has AMX)
 * trains and evaluates to the f32 numbers within bf16 precision, and auto
 * always runs. */
static double eval_loss(const char *extra, const char *data) {
    char args[2048], out[16384];
    snprintf(args, sizeof args, "eval --model " MODEL " --adapter %s/A --data %s --seq 64 --json %s", tmp, data, extra);
    if (test_run_cli(args, out, sizeof out) != 0) return NAN;
    cJSON *j = cJSON_Parse(out);
    const cJSON *l = cJSON_GetObjectItem(j, "loss");
    const double v = l ? l->valuedouble : NAN;
    cJSON_Delete(j);
    return v;
}

static void compute_precision_option(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[300], args[2048], out[16384];
    snprintf(data, sizeof data, "%s/d.jsonl", tmp);
    snprintf(args, sizeof args, "train --model " MODEL " --data %s --steps 2 --batch 2 --seq 48 --out %s/cp --compute f16", data, tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 2);
    CHECK_MSG(strstr(out, "f32, bf16 or auto") != NULL, "%s", out);
    const double f32 = eval_loss("--compute f32", data), aut = eval_loss("--compute auto", data);
    CHECK_MSG(isfinite(f32) && isfinite(aut) && fabs(aut - f32) < 2e-2 * f32, "f32 %g, auto %g", f32, aut);
    snprintf(args, sizeof args, "train --model " MODEL " --data %s --steps 3 --batch 2 --seq 48 --lr 0.01 --quiet --out %s/cp --bf16",
             data, tmp);
    const int rc = test_run_cli(args, out, sizeof out);
    if (!peft_compute_bf16_supported()) {
        CHECK_EQ_INT(rc, 1);
        CHECK_MSG(strstr(out, "AMX") != NULL && strstr(out, "AVX512-BF16") != NULL, "%s", out);
        printf("    neither AMX-BF16 nor AVX512-BF16 on this CPU: --bf16 refused with a message, auto ran in f32\n");
        return;
    }
    CHECK_EQ_INT(rc, 0);
    /* a bf16 checkpoint resumed in f32 carries on, saying so */
    snprintf(args, sizeof args, "train --model " MODEL " --data %s --steps 3 --save-every 2 --batch 2 --seq 48 --quiet --out %s/cr --bf16",
             data, tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    snprintf(args, sizeof args, "train --model " MODEL " --data %s --steps 3 --save-every 2 --batch 2 --seq 48 --quiet --out %s/cr "
             "--resume %s/cr", data, tmp, tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    CHECK_MSG(strstr(out, "resumes with f32") != NULL, "%s", out);
    const double bf = eval_loss("--bf16", data);
    CHECK_MSG(isfinite(bf) && fabs(bf - f32) < 2e-2 * f32 && bf != f32, "f32 %g, bf16 %g", f32, bf);
    printf("    eval loss f32 %.6f, bf16 %.6f\n", f32, bf);
}

static void json_config_matches_options(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[300], cfg[300], args[2048], out[16384];
    snprintf(data, sizeof data, "%s/dc.jsonl", tmp);
    write_data(data, 30, NULL);
    snprintf(cfg, sizeof cfg, "%s/train.json", tmp);
    FILE *f = fopen(cfg, "w");
    fprintf(f, "{\"model\": \"" MODEL "\", \"data\": \"%s\", \"r\": 4, \"alpha\": 8, "
               "\"target\": [\"q_proj\", \"v_proj\"], \"rslora\": true, \"steps\": 3, \"batch\": 2, "
               "\"seq\": 48, \"lr\": 0.01, \"warmup_steps\": 1, \"quiet\": true}", data);
    fclose(f);
    /* warmup_steps is not an option name: the file is refused */
    snprintf(args, sizeof args, "train --config %s --out %s/c1", cfg, tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 2);
    CHECK_MSG(strstr(out, "warmup_steps") != NULL, "%s", out);
    f = fopen(cfg, "w");
    fprintf(f, "{\"model\": \"" MODEL "\", \"data\": \"%s\", \"r\": 4, \"alpha\": 8, "
               "\"target\": [\"q_proj\", \"v_proj\"], \"rslora\": true, \"steps\": 99, \"batch\": 2, "
               "\"seq\": 48, \"lr\": 0.01, \"warmup\": 1, \"quiet\": true}", data);
    fclose(f);
    snprintf(args, sizeof args, "train --config %s --steps 3 --out %s/c1", cfg, tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    snprintf(args, sizeof args, "train --model " MODEL " --data %s --r 4 --alpha 8 --target q_proj,v_proj --rslora "
             "--steps 3 --batch 2 --seq 48 --lr 0.01 --warmup 1 --quiet --out %s/c2", data, tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    char pa[400], pb[400];
    snprintf(pa, sizeof pa, "%s/c1/adapter_model.safetensors", tmp);
    snprintf(pb, sizeof pb, "%s/c2/adapter_model.safetensors", tmp);
    size_t la = 0, lb = 0;
    char *da = test_read_file(pa, &la), *db = test_read_file(pb, &lb);
    CHECK(da && db && la == lb && memcmp(da, db, la) == 0);
    free(da);
    free(db);
    snprintf(pa, sizeof pa, "%s/c1/adapter_config.json", tmp);
    da = test_read_file(pa, NULL);
    cJSON *j = da ? cJSON_Parse(da) : NULL;
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(j, "use_rslora")));
    CHECK_EQ_INT(cJSON_GetObjectItem(j, "r") ? cJSON_GetObjectItem(j, "r")->valueint : 0, 4);
    cJSON_Delete(j);
    free(da);
}

/* The number after `key` in the CLI's log ("= peak 54 MiB", "peak RSS: 50 MiB"). */
static double mib_after(const char *log, const char *key) {
    const char *p = strstr(log, key);
    return p ? strtod(p + strlen(key), NULL) : -1;
}

/* The bar is 10 %. Under AddressSanitizer the process also holds
 * redzones around every allocation and a quarantine of freed blocks, which
 * the plan does not model: there the tiny fixture measured 9.6 % and 10.1 %
 * over the plan in two runs of the same commit, so ASan builds get 15 %. */
#if defined(__SANITIZE_ADDRESS__)
#define PLAN_TOLERANCE 0.15
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PLAN_TOLERANCE 0.15
#endif
#endif
#ifndef PLAN_TOLERANCE
#define PLAN_TOLERANCE 0.10
#endif

/* The memory plan printed before training (and alone with --dry-run) is
 * within 10 % of the peak RSS the run then measures, with and without
 * gradient checkpointing; --max-memory between the two plans turns
 * checkpointing on, below both refuses naming the sizes, and a bad size is
 * named. Packed rows, so that every planned buffer is used. */
static void memory_plan_predicts_the_peak(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[300], args[2048], log[16384];
    snprintf(data, sizeof data, "%s/mem.jsonl", tmp);
    {
        FILE *f = fopen(data, "w");
        const char *w[] = {"the", "king", "queen", "lord", "night", "day", "love", "sword", "crown", "heart", "fair"};
        peft_rng r;
        peft_rng_seed(&r, 5);
        for (int i = 0; i < 300; i++) {
            fprintf(f, "{\"text\": \"");
            for (int k = 0; k < 40; k++) fprintf(f, "%s%s", k ? " " : "", w[peft_rng_u64(&r) % 11]);
            fprintf(f, "\"}\n");
        }
        fclose(f);
    }
    const char *shape = "--batch 32 --seq 128 --pack --threads 2";
    double plan[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        const char *ck = k ? " --checkpoint-layers" : "";
        snprintf(args, sizeof args, "train --model " MODEL " --data %s %s --dry-run%s", data, shape, ck);
        CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 0);
        plan[k] = mib_after(log, "= peak ");
        CHECK_MSG(plan[k] > 0 && strstr(log, "memory plan: weights") && !strstr(log, "step 1/"), "%s", log);
        snprintf(args, sizeof args, "train --model " MODEL " --data %s %s --steps 3 --quiet --out %s/mem%d%s", data, shape,
                 tmp, k, ck);
        CHECK_MSG(test_run_cli(args, log, sizeof log) == 0, "%s", log);
        const double got = mib_after(log, "peak RSS: ");
        printf("    %s: planned %.0f MiB, peak RSS %.0f MiB\n", k ? "checkpointing" : "everything kept", plan[k], got);
        CHECK_MSG(got > 0 && fabs(plan[k] - got) <= PLAN_TOLERANCE * got, "planned %.0f MiB, measured %.0f MiB", plan[k],
                  got);
    }
    CHECK(plan[1] < plan[0]);
    char budget[32];
    snprintf(budget, sizeof budget, "%.0fM", (plan[0] + plan[1]) / 2);
    snprintf(args, sizeof args, "train --model " MODEL " --data %s %s --dry-run --max-memory %s", data, shape, budget);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 0);
    CHECK_MSG(strstr(log, "gradient checkpointing of every layer") && fabs(mib_after(log, "= peak ") - plan[1]) <= 1,
              "%s", log);
    snprintf(budget, sizeof budget, "%.0fM", plan[1] / 2);
    snprintf(args, sizeof args, "train --model " MODEL " --data %s %s --dry-run --max-memory %s", data, shape, budget);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 1);
    CHECK_MSG(strstr(log, "does not fit in") && strstr(log, "lower --batch or --seq"), "%s", log);
    snprintf(args, sizeof args, "train --model " MODEL " --data %s %s --dry-run --max-memory lots", data, shape);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 2);
    CHECK_MSG(strstr(log, "\"lots\" is not a size"), "%s", log);
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/peft_train_cli_XXXXXX");
    if (!mkdtemp(tmp)) return 1;
    TEST_RUN(resume_after_kill_is_exact);
    TEST_RUN(bad_data_names_file_and_line);
    TEST_RUN(unwritable_output_is_an_error);
    TEST_RUN(nan_loss_stops_and_keeps_checkpoint);
    TEST_RUN(eval_and_generate_use_the_adapter);
    TEST_RUN(compute_precision_option);
    TEST_RUN(json_config_matches_options);
    TEST_RUN(memory_plan_predicts_the_peak);
    if (test_rm_rf(tmp) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    TEST_MAIN_END();
}
