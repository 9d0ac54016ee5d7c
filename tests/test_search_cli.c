/* test_search_cli.c — `peft search` end to end on the tiny Llama fixture:
 * the rungs halve as planned and the leaderboard ranks by the validation
 * metric; a search stopped after some trials and resumed gives the same
 * numbers and the same best adapter, bit for bit, as one run straight
 * through; the best adapter is the winner's and evaluates to its reported
 * loss; classification ranks by accuracy; and every bad input of the issue
 * is refused before any trial, with a line that says why. */
#include "core/core.h"
#include "peft.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MODEL "tests/fixtures/models/tiny-llama"

static char tmp[256];

static void write_lm_data(const char *path, int n_rows) {
    FILE *f = fopen(path, "w");
    const char *w[] = {"the", "king", "queen", "lord", "night", "day", "love", "sword", "crown", "heart", "fair"};
    peft_rng r;
    peft_rng_seed(&r, 3);
    for (int i = 0; i < n_rows; i++) {
        fprintf(f, "{\"text\": \"");
        /* a pattern to learn: a word and then its neighbour in the list */
        int len = 6 + (int)(peft_rng_u64(&r) % 20), at = (int)(peft_rng_u64(&r) % 11);
        for (int k = 0; k < len; k++) fprintf(f, "%s%s", k ? " " : "", w[(at + k) % 11]);
        fprintf(f, "\"}\n");
    }
    fclose(f);
}

static cJSON *read_json(const char *path) {
    char *txt = test_read_file(path, NULL);
    cJSON *j = txt ? cJSON_Parse(txt) : NULL;
    free(txt);
    return j;
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

#define COMMON "search --model " MODEL " --seq 48 --batch 4 --threads 1 --quiet --seed 7 --budget-params 12k " \
               "--budget-time 1h --trials 6 --min-steps 3 --eta 2 --methods lora,ia3,prompt --ranks 2,4"

static void rungs_halve_and_rank(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[300], args[2048], out[32768], path[400];
    snprintf(data, sizeof data, "%s/lm.jsonl", tmp);
    write_lm_data(data, 100);
    snprintf(args, sizeof args, COMMON " --data %s --out %s/A", data, tmp);
    const int rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0, "exit %d: %s", rc, out);
    CHECK(strstr(out, "best: ") != NULL);
    snprintf(path, sizeof path, "%s/A/search.json", tmp);
    cJSON *st = read_json(path);
    CHECK(st != NULL);
    snprintf(path, sizeof path, "%s/A/leaderboard.json", tmp);
    cJSON *lb = read_json(path);
    CHECK(lb != NULL);
    if (!st || !lb) { cJSON_Delete(st); cJSON_Delete(lb); return; }
    /* 6 trials of 3 steps, 3 of 6, 1 of 12 */
    const cJSON *plan = cJSON_GetObjectItemCaseSensitive(st, "plan");
    const cJSON *rn = cJSON_GetObjectItemCaseSensitive(plan, "rung_trials"), *rs = cJSON_GetObjectItemCaseSensitive(plan, "rung_steps");
    CHECK_EQ_INT(cJSON_GetArraySize(rn), 3);
    const int want_n[] = {6, 3, 1}, want_s[] = {3, 6, 12};
    for (int k = 0; k < 3 && k < cJSON_GetArraySize(rn); k++) {
        CHECK_EQ_INT(cJSON_GetArrayItem(rn, k)->valueint, want_n[k]);
        CHECK_EQ_INT(cJSON_GetArrayItem(rs, k)->valueint, want_s[k]);
    }
    const cJSON *trials = cJSON_GetObjectItemCaseSensitive(st, "trials");
    CHECK_EQ_INT(cJSON_GetArraySize(trials), 10);
    /* the three promoted from rung 0 are its three best by loss */
    double r0[16];
    int c0[16], n0 = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, trials) if (num(t, "rung") == 0 && n0 < 16) { r0[n0] = num(t, "val_loss"); c0[n0++] = (int)num(t, "candidate"); }
    CHECK_EQ_INT(n0, 6);
    cJSON_ArrayForEach(t, trials) if (num(t, "rung") == 1) {
        const int c = (int)num(t, "candidate");
        double mine = NAN;
        int worse = 0;
        for (int i = 0; i < n0; i++) if (c0[i] == c) mine = r0[i];
        for (int i = 0; i < n0; i++) worse += r0[i] > mine;
        CHECK_MSG(worse >= 3, "candidate %d went on with rung-0 loss %g, beaten by %d", c, mine, n0 - 1 - worse);
    }
    /* the leaderboard: the highest rung first, then by loss */
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(lb, "leaderboard");
    CHECK_EQ_INT(cJSON_GetArraySize(rows), 6);
    for (int i = 1; i < cJSON_GetArraySize(rows); i++) {
        const cJSON *a = cJSON_GetArrayItem(rows, i - 1), *b = cJSON_GetArrayItem(rows, i);
        CHECK(num(a, "rung") > num(b, "rung") || (num(a, "rung") == num(b, "rung") && num(a, "val_loss") <= num(b, "val_loss")));
    }
    const cJSON *first = cJSON_GetArrayItem(rows, 0);
    CHECK_EQ_INT((int)num(first, "rung"), 2);
    CHECK(num(first, "params") <= 12000);
    /* the saved adapter is the winner: its trial's validation loss again,
     * computed here by the library on the same split */
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 1;
    peft_ctx *ctx = peft_init(&cp);
    peft_model *m = peft_model_load(ctx, MODEL);
    snprintf(path, sizeof path, "%s/A/best", tmp);
    peft_adapter *ad = m ? peft_adapter_load(m, path) : NULL;
    CHECK_MSG(ad != NULL, "%s", peft_last_error(ctx));
    peft_dataset *d = m ? peft_dataset_load(m, data, 48, 0) : NULL;
    peft_dataset *v = d ? peft_dataset_split(m, d, 0.1, 7) : NULL;
    if (ad && v) {
        double loss, acc;
        int64_t n;
        CHECK_OK(peft_eval_dataset(m, ad, v, 4, 48, NULL, &loss, &n, &acc));
        CHECK_NEAR(loss, num(first, "val_loss"), 1e-9);
        CHECK(strcmp(peft_adapter_method(ad), cJSON_GetObjectItemCaseSensitive(first, "method")->valuestring) == 0);
    }
    peft_dataset_free(v);
    peft_dataset_free(d);
    peft_adapter_free(ad);
    peft_model_free(m);
    peft_free(ctx);
    cJSON_Delete(st);
    cJSON_Delete(lb);
}

static void resume_gives_the_same_search(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[300], args[2048], out[32768], pa[400], pb[400];
    snprintf(data, sizeof data, "%s/lm.jsonl", tmp);
    snprintf(args, sizeof args, COMMON " --data %s --out %s/B --max-trials 4", data, tmp);
    int rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 3, "exit %d: %s", rc, out);
    CHECK(strstr(out, "--resume") != NULL);
    snprintf(args, sizeof args, COMMON " --data %s --out %s/B --max-trials 3 --resume", data, tmp);
    rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 3, "exit %d: %s", rc, out);
    CHECK(strstr(out, "resumed: 4 trials done") != NULL);
    snprintf(args, sizeof args, COMMON " --data %s --out %s/B --resume", data, tmp);
    rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0, "exit %d: %s", rc, out);
    /* the same trials with the same numbers, and the same adapter bytes */
    snprintf(pa, sizeof pa, "%s/A/search.json", tmp);
    snprintf(pb, sizeof pb, "%s/B/search.json", tmp);
    cJSON *a = read_json(pa), *b = read_json(pb);
    CHECK(a && b);
    if (a && b) {
        const cJSON *ta = cJSON_GetObjectItemCaseSensitive(a, "trials"), *tb = cJSON_GetObjectItemCaseSensitive(b, "trials");
        CHECK_EQ_INT(cJSON_GetArraySize(ta), cJSON_GetArraySize(tb));
        for (int i = 0; i < cJSON_GetArraySize(ta) && i < cJSON_GetArraySize(tb); i++) {
            const cJSON *x = cJSON_GetArrayItem(ta, i), *y = cJSON_GetArrayItem(tb, i);
            CHECK_EQ_INT((int)num(x, "candidate"), (int)num(y, "candidate"));
            CHECK_MSG(num(x, "val_loss") == num(y, "val_loss"), "trial %d: %.17g vs %.17g", i, num(x, "val_loss"),
                      num(y, "val_loss"));
        }
    }
    cJSON_Delete(a);
    cJSON_Delete(b);
    snprintf(pa, sizeof pa, "%s/A/best/adapter_model.safetensors", tmp);
    snprintf(pb, sizeof pb, "%s/B/best/adapter_model.safetensors", tmp);
    size_t la = 0, lb = 0;
    char *fa = test_read_file(pa, &la), *fb = test_read_file(pb, &lb);
    CHECK(fa && fb && la == lb && memcmp(fa, fb, la) == 0);
    free(fa);
    free(fb);
    /* a finished search resumed again runs nothing new */
    rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0, "exit %d: %s", rc, out);
    CHECK(strstr(out, "resumed: 10 trials done") != NULL);
}

static void classification_ranks_by_accuracy(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[300], args[2048], out[32768], path[400];
    snprintf(data, sizeof data, "%s/cls.jsonl", tmp);
    FILE *f = fopen(data, "w");
    const char *pos[] = {"love", "fair", "day", "crown"}, *neg[] = {"night", "sword", "grief", "war"};
    peft_rng r;
    peft_rng_seed(&r, 5);
    for (int i = 0; i < 96; i++) {
        const int y = (int)(peft_rng_u64(&r) % 2);
        fprintf(f, "{\"text\": \"the %s and the %s\", \"label\": %d}\n", (y ? pos : neg)[peft_rng_u64(&r) % 4],
                (y ? pos : neg)[peft_rng_u64(&r) % 4], y);
    }
    fclose(f);
    snprintf(args, sizeof args,
             "search --model " MODEL " --seq 32 --batch 8 --threads 1 --quiet --seed 1 --budget-params 5%% --budget-time 1h "
             "--trials 4 --min-steps 4 --eta 2 --methods lora,ia3 --ranks 4 --val-split 0.25 --data %s --out %s/C",
             data, tmp);
    const int rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0, "exit %d: %s", rc, out);
    CHECK(strstr(out, "accuracy") != NULL);
    snprintf(path, sizeof path, "%s/C/leaderboard.json", tmp);
    cJSON *lb = read_json(path);
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(lb, "leaderboard");
    CHECK_EQ_INT(cJSON_GetArraySize(rows), 4);
    for (int i = 1; i < cJSON_GetArraySize(rows); i++) {
        const cJSON *a = cJSON_GetArrayItem(rows, i - 1), *b = cJSON_GetArrayItem(rows, i);
        CHECK(!isnan(num(a, "val_accuracy")));
        CHECK(num(a, "rung") > num(b, "rung") ||
              (num(a, "rung") == num(b, "rung") && num(a, "val_accuracy") >= num(b, "val_accuracy")));
    }
    cJSON_Delete(lb);
    snprintf(path, sizeof path, "%s/C/leaderboard.md", tmp);
    char *md = test_read_file(path, NULL);
    CHECK(md && strstr(md, "| 1 | ") != NULL);
    free(md);
}

/* SIGINT after the first trial's row: the trial in progress is dropped,
 * the search says how to continue and exits 130; the resume then ends
 * with the uninterrupted search's numbers. */
static void sigint_stops_resumably(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[300], out_dir[300], cmd[2048];
    snprintf(data, sizeof data, "%s/lm.jsonl", tmp);
    snprintf(out_dir, sizeof out_dir, "%s/E", tmp);
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        execl(getenv("PEFT_CLI"), "peft", "search", "--model", MODEL, "--seq", "48", "--batch", "4", "--threads", "1",
              "--seed", "7", "--budget-params", "12k", "--budget-time", "1h", "--trials", "6", "--min-steps", "3", "--eta",
              "2", "--methods", "lora,ia3,prompt", "--ranks", "2,4", "--data", data, "--out", out_dir, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    char line[1024], all[16384] = "";
    int signalled = 0;
    while (fgets(line, sizeof line, f)) {
        if (strlen(all) + strlen(line) < sizeof all) strcat(all, line);
        /* the second trial's row: the third is under way */
        if (!signalled && !strncmp(line, "2 ", 2)) { kill(pid, SIGINT); signalled = 1; }
    }
    fclose(f);
    int st;
    waitpid(pid, &st, 0);
    CHECK(signalled);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 130, "status %d: %s", st, all);
    CHECK_MSG(strstr(all, "stopped by SIGINT") && strstr(all, "--resume"), "%s", all);
    snprintf(cmd, sizeof cmd, COMMON " --data %s --out %s --resume", data, out_dir);
    char out[32768];
    const int rc = test_run_cli(cmd, out, sizeof out);
    CHECK_MSG(rc == 0, "exit %d: %s", rc, out);
    char pa[400], pb[400];
    snprintf(pa, sizeof pa, "%s/A/best/adapter_model.safetensors", tmp);
    snprintf(pb, sizeof pb, "%s/best/adapter_model.safetensors", out_dir);
    size_t la = 0, lb = 0;
    char *fa = test_read_file(pa, &la), *fb = test_read_file(pb, &lb);
    CHECK(fa && fb && la == lb && memcmp(fa, fb, la) == 0);
    free(fa);
    free(fb);
}

/* --probe: the probe's proposal for the budget is a candidate of the first
 * rung, and the adapter it trains has the proposal's modules and ranks. */
static void probe_proposal_is_a_candidate(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[300], args[2048], out[32768], path[400];
    snprintf(data, sizeof data, "%s/lm.jsonl", tmp);
    snprintf(args, sizeof args,
             "search --model " MODEL " --seq 48 --batch 4 --threads 1 --quiet --seed 7 --budget-params 5000 "
             "--budget-time 1h --trials 4 --min-steps 2 --eta 2 --methods lora,ia3 --ranks 2,4 --probe --data %s --out %s/P",
             data, tmp);
    const int rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 0, "exit %d: %s", rc, out);
    snprintf(path, sizeof path, "%s/P/probe_config.json", tmp);
    cJSON *pc = read_json(path);
    snprintf(path, sizeof path, "%s/P/leaderboard.json", tmp);
    cJSON *lb = read_json(path);
    CHECK(pc && lb);
    if (!pc || !lb) { cJSON_Delete(pc); cJSON_Delete(lb); return; }
    const cJSON *row, *found = NULL;
    cJSON_ArrayForEach(row, cJSON_GetObjectItemCaseSensitive(lb, "leaderboard")) {
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(row, "label");
        if (cJSON_IsString(l) && strstr(l->valuestring, "probe(")) found = row;
    }
    CHECK_MSG(found != NULL, "no probe candidate in %s", out);
    if (found) {
        CHECK(num(found, "params") <= 5000);
        snprintf(path, sizeof path, "%s/P/trials/c%03d-s2/adapter_config.json", tmp, (int)num(found, "candidate"));
        cJSON *ac = read_json(path);
        CHECK_MSG(ac != NULL, "%s", path);
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(pc, "rank_pattern");
        const cJSON *got = cJSON_GetObjectItemCaseSensitive(ac, "rank_pattern");
        const cJSON *kv;
        cJSON_ArrayForEach(kv, want) {
            const cJSON *g = cJSON_GetObjectItemCaseSensitive(got, kv->string);
            CHECK_MSG(cJSON_IsNumber(g) && g->valueint == kv->valueint, "rank_pattern[%s]", kv->string);
        }
        CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(ac, "target_modules")),
                     cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(pc, "target_modules")));
        CHECK_EQ_INT(cJSON_GetObjectItemCaseSensitive(ac, "r")->valueint, cJSON_GetObjectItemCaseSensitive(pc, "r")->valueint);
        cJSON_Delete(ac);
    }
    cJSON_Delete(pc);
    cJSON_Delete(lb);
}

/* Each bad input: the exit status, the words that say why, and no trial. */
static void expect_refusal(const char *args, const char *why, const char *out_dir) {
    char out[16384], path[400];
    const int rc = test_run_cli(args, out, sizeof out);
    CHECK_MSG(rc != 0 && rc != 3, "exit %d for %s", rc, args);
    CHECK_MSG(strstr(out, why) != NULL, "\"%s\" not in: %s", why, out);
    if (out_dir) {
        snprintf(path, sizeof path, "%s/trials/c000-s3", out_dir);
        struct stat st;
        CHECK_MSG(stat(path, &st) != 0, "%s ran a trial", args);
    }
}

static void bad_input_is_refused_before_any_trial(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[300], small[300], other[300], args[2048];
    snprintf(data, sizeof data, "%s/lm.jsonl", tmp);
    snprintf(small, sizeof small, "%s/small.jsonl", tmp);
    write_lm_data(small, 30);
    snprintf(other, sizeof other, "%s/other.jsonl", tmp);
    write_lm_data(other, 101);
    const char *base = "search --model " MODEL " --seq 48 --threads 1 --quiet --budget-time 1h";
    snprintf(args, sizeof args, "%s --budget-params 50 --data %s --out %s/D1", base, data, tmp);
    expect_refusal(args, "smaller than the smallest candidate", NULL);
    snprintf(args, sizeof args, "%s --budget-params 12k --data %s --out %s/D2 --val-split 0.1", base, small, tmp);
    expect_refusal(args, "too few for a validation split", NULL);
    snprintf(args, sizeof args,
             "search --model " MODEL " --seq 48 --threads 1 --quiet --budget-params 12k --budget-time 0.01s --trials 2 "
             "--data %s --out %s/D3", data, tmp);
    expect_refusal(args, "too short", NULL);
    snprintf(args, sizeof args, "%s --budget-params 12k --budget-time soon --data %s --out %s/D4", base, data, tmp);
    expect_refusal(args, "--budget-time must be a duration", NULL);
    snprintf(args, sizeof args, "%s --budget-params lots --data %s --out %s/D4", base, data, tmp);
    expect_refusal(args, "--budget-params must be", NULL);
    snprintf(args, sizeof args, "%s --budget-params 12k --methods lora,lorra --data %s --out %s/D4", base, data, tmp);
    expect_refusal(args, "unknown method \"lorra\"", NULL);
    snprintf(args, sizeof args, "%s --budget-params 12k --methods full --data %s --out %s/D4", base, data, tmp);
    expect_refusal(args, "not a parameter-efficient candidate", NULL);
    /* resuming A with another data file, seed or thread count */
    char out_a[300];
    snprintf(out_a, sizeof out_a, "%s/A", tmp);
    snprintf(args, sizeof args, COMMON " --data %s --out %s --resume", other, out_a);
    expect_refusal(args, "--data", NULL);
    snprintf(args, sizeof args, COMMON " --data %s --out %s --resume --seed 8", data, out_a);
    expect_refusal(args, "--seed", NULL);
    snprintf(args, sizeof args, COMMON " --data %s --out %s", data, out_a);
    expect_refusal(args, "add --resume", NULL);
    snprintf(args, sizeof args, COMMON " --data %s --out %s/nothing --resume", data, tmp);
    expect_refusal(args, "holds no search", NULL);
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/peft_search_cli_XXXXXX");
    if (!mkdtemp(tmp)) return 1;
    TEST_RUN(rungs_halve_and_rank);
    TEST_RUN(resume_gives_the_same_search);
    TEST_RUN(sigint_stops_resumably);
    TEST_RUN(classification_ranks_by_accuracy);
    TEST_RUN(probe_proposal_is_a_candidate);
    TEST_RUN(bad_input_is_refused_before_any_trial);
    if (test_rm_rf(tmp) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    TEST_MAIN_END();
}
