/* test_messages_cli.c — what the CLI says when something is off or unclear
 * (issue 15 items 4 and 8): the data summary's dropped / truncated rows with
 * their reasons, the length distribution and the --seq that keeps rows
 * whole, the WARNING past 10 %; the JSON-array hint; Alpaca and ShareGPT
 * rows accepted; did-you-mean for options, config keys, methods and
 * commands; `train --help` listing every data kind; the bottleneck summary;
 * `--compute auto` saying what it chose and why; `peft info` on HF adapter
 * folders and llama.cpp GGUF LoRA files. Through the built CLI (PEFT_CLI). */
#include "core/core.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <unistd.h>

#define MODEL "tests/fixtures/models/tiny-llama"

static char tmp[256];

static const char *tmp_file(const char *name, const char *text) {
    static char p[4][400];
    static int k;
    char *path = p[k++ % 4];
    snprintf(path, 400, "%s/%s", tmp, name);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    return path;
}

static int run(char *out, size_t cap, const char *fmt, ...) {
    char args[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    out[0] = 0;
    return test_run_cli(args, out, cap);
}

#define HAS(needle) CHECK_MSG(strstr(out, needle) != NULL, "no \"%s\" in:\n%s", needle, out)

/* 20 prompt/completion rows, 5 of them with a prompt far past --seq 24. */
static void data_summary_says_what_was_lost(void) {
    char text[16384], out[32768];
    size_t o = 0;
    /* the first of the five longer still: the 95th percentile is below the longest */
    for (int i = 0; i < 20; i++)
        o += (size_t)snprintf(text + o, sizeof text - o, "{\"prompt\": \"%s%s question %d:\", \"completion\": \" answer %d\"}\n",
                              i % 4 == 0 ? "a long long long long long long long long long long long long long long long "
                                           "long long long long long long long long long long long"
                                         : "short",
                              i == 0 ? " and longer and longer and longer" : "", i, i);
    const char *data = tmp_file("pc.jsonl", text);
    CHECK_EQ_INT(run(out, sizeof out, "train --model " MODEL " --data %s --seq 24 --dry-run", data), 0);
    HAS("data: 5 of 20 rows dropped: 5 lost every target token to --seq 24");
    HAS("would keep 95 % whole");
    HAS("WARNING: data: 5 of 20 rows (25 %) were dropped: raise --seq");
    HAS("--seq 24 cut ");
    /* with room for all: no warning, every row whole */
    CHECK_EQ_INT(run(out, sizeof out, "train --model " MODEL " --data %s --seq 128 --dry-run", data), 0);
    HAS("--seq 128 keeps every row whole");
    CHECK_MSG(!strstr(out, "WARNING") && !strstr(out, "dropped"), "%s", out);
    /* mostly malformed under --skip-bad: the warning says how to find them */
    const char *bad = tmp_file("bad.jsonl", "{\"text\": \"one two\"}\nnot json\n{\"text\": \"x\"\n{\"text\": \"three\"}\n");
    CHECK_EQ_INT(run(out, sizeof out, "train --model " MODEL " --data %s --skip-bad --dry-run", bad), 0);
    HAS("data: 2 of 4 rows dropped: 2 malformed (skipped: --skip-bad)");
    HAS("WARNING: data: 2 of 4 rows (50 %) were dropped: most are malformed; without --skip-bad the first stops the run");
    /* eval says which rows its numbers leave out */
    CHECK_EQ_INT(run(out, sizeof out, "eval --model " MODEL " --data %s --seq 24", data), 0);
    HAS("eval: 5 of 20 rows left out: 5 with every target token past --seq 24");
    /* nothing left: the error says why and what --seq would do */
    CHECK_EQ_INT(run(out, sizeof out, "train --model " MODEL " --data %s --seq 3 --dry-run", data), 1);
    HAS("no usable examples");
    HAS("20 had no target token left after truncation to 3 tokens");
    HAS("keeps 95 % of them whole");
}

static void json_array_and_unknown_rows_say_what_to_do(void) {
    char out[16384];
    const char *data = tmp_file("rows.json", "[{\"text\": \"a\"},\n {\"text\": \"b\"}]\n");
    CHECK_EQ_INT(run(out, sizeof out, "train --model " MODEL " --data %s --dry-run", data), 1);
    HAS("is a JSON array, but JSONL is expected");
    HAS("jq -c '.[]'");
    data = tmp_file("qa.jsonl", "{\"question\": \"a\", \"answer\": \"b\"}\n");
    CHECK_EQ_INT(run(out, sizeof out, "train --model " MODEL " --data %s --dry-run", data), 1);
    HAS("qa.jsonl:1: no known fields (found \"question\", \"answer\")");
    HAS("Alpaca {instruction[, input], output}");
}

static void alpaca_and_sharegpt_rows_train(void) {
    char out[16384];
    CHECK_EQ_INT(run(out, sizeof out, "train --model " MODEL " --data tests/fixtures/data/alpaca.jsonl --dry-run"), 0);
    HAS("examples (prompt/completion, read from Alpaca rows)");
    CHECK_EQ_INT(run(out, sizeof out, "train --model " MODEL " --data tests/fixtures/data/sharegpt.jsonl --dry-run"), 0);
    HAS("2 examples (messages, read from ShareGPT rows)");
}

static void did_you_mean(void) {
    char out[16384];
    const char *data = "tests/fixtures/data/alpaca.jsonl";
    CHECK_EQ_INT(run(out, sizeof out, "train --model " MODEL " --data %s --out %s/o --seqq 3", data, tmp), 2);
    HAS("unknown option \"--seqq\": did you mean --seq?");
    CHECK_EQ_INT(run(out, sizeof out, "train --model " MODEL " --data %s --out %s/o --learning_rate 1e-3", data, tmp), 2);
    HAS("did you mean --lr?");
    CHECK_EQ_INT(run(out, sizeof out, "train --model " MODEL " --data %s --out %s/o --method lorra", data, tmp), 2);
    HAS("unknown method \"lorra\": did you mean lora?");
    CHECK_EQ_INT(run(out, sizeof out, "train --model " MODEL " --data %s --out %s/o --zzzzzz 1", data, tmp), 2);
    CHECK_MSG(strstr(out, "unknown option \"--zzzzzz\"") && !strstr(out, "did you mean"), "%s", out);
    const char *cfg = tmp_file("cfg.json", "{\"learning_rate\": 0.001, \"warmpu\": 3}\n");
    CHECK_EQ_INT(run(out, sizeof out, "train --model " MODEL " --data %s --out %s/o --config %s", data, tmp, cfg), 2);
    HAS("unknown option \"learning_rate\": did you mean \"lr\"?");
    HAS("unknown option \"warmpu\": did you mean \"warmup\"?");
    CHECK_EQ_INT(run(out, sizeof out, "trian --model " MODEL), 2);
    HAS("unknown command \"trian\": did you mean peft train?");
    CHECK_EQ_INT(run(out, sizeof out, "eval --model " MODEL " --dta %s", data), 2);
    HAS("peft eval: unknown option \"--dta\": did you mean --data?");
    CHECK_EQ_INT(run(out, sizeof out, "generate --modle " MODEL " --prompt hi"), 2);
    HAS("did you mean --model?");
    CHECK_EQ_INT(run(out, sizeof out, "info " MODEL " --jsno"), 2);
    HAS("did you mean --json?");
}

static void train_help_lists_every_data_kind(void) {
    char out[32768];
    CHECK_EQ_INT(run(out, sizeof out, "train --help"), 0);
    HAS("{\"text\"} ");
    HAS("{\"prompt\", \"completion\"}");
    HAS("{\"messages\": [{\"role\", \"content\"}, ...]}");
    HAS("{\"text\", \"label\"}");
    HAS("{\"text\", \"text_pair\", \"label\"}");
    HAS("{\"anchor\", \"positive\"[, \"negative\"]}");
    HAS("{\"instruction\"[, \"input\"], \"output\"}");
    HAS("{\"conversations\": [{\"from\", \"value\"}, ...]}");
}

static void bottleneck_summary_reads_as_count_and_shape(void) {
    char out[16384];
    CHECK_EQ_INT(run(out, sizeof out, "train --model " MODEL " --data tests/fixtures/data/alpaca.jsonl --method "
                                      "adapter-houlsby --dry-run"), 0);
    HAS("adapter-houlsby: 4 adapters (after attention and the MLP in 2 layers), each 64 -> 4 -> 64 (reduction factor 16)");
}

static void compute_auto_says_what_and_why(void) {
    char out[16384];
    CHECK_EQ_INT(run(out, sizeof out, "train --model " MODEL " --data tests/fixtures/data/alpaca.jsonl --compute auto --dry-run"),
                 0);
    if (peft_compute_bf16_supported()) HAS("compute: bf16");
    else HAS("compute: f32 (auto: this CPU has neither AMX-BF16 nor AVX512-BF16)");
    HAS("(auto: this CPU has");
    CHECK_EQ_INT(run(out, sizeof out, "generate --model " MODEL " --prompt hi --max-tokens 1 --compute auto"), 0);
    HAS("(auto: this CPU has");
}

static void info_describes_adapters(void) {
    char out[16384];
    const char *hf = "tests/fixtures/lora/llama_qv_rslora/adapter";
    CHECK_EQ_INT(run(out, sizeof out, "info %s", hf), 0);
    HAS("(HF PEFT adapter folder)");
    HAS("method:          lora, r 8, alpha 16 (scale 5.65685, rsLoRA");
    HAS("targets:         v_proj, q_proj");
    HAS("tensors:         4 (F32), 2 adapted modules in 1 layer\n");
    HAS("parameters:      1792");
    /* the same adapter as llama.cpp's GGUF LoRA */
    char gguf[400];
    snprintf(gguf, sizeof gguf, "%s/ad.gguf", tmp);
    CHECK_EQ_INT(run(out, sizeof out, "export --adapter %s --model " MODEL " --format gguf --out %s", hf, gguf), 0);
    CHECK_EQ_INT(run(out, sizeof out, "info %s", gguf), 0);
    CHECK_MSG(!strstr(out, "block_count"), "%s", out);
    HAS("(llama.cpp GGUF adapter)");
    HAS("method:          lora, r 8, alpha 45.2548 (scale 5.65685)");
    HAS("architecture:    llama");
    HAS("targets:         attn_q, attn_v");
    HAS("parameters:      1792");
    CHECK_EQ_INT(run(out, sizeof out, "info %s --json", gguf), 0);
    cJSON *j = cJSON_Parse(out);
    CHECK(j != NULL);
    const cJSON *r = cJSON_GetObjectItem(j, "r"), *np = cJSON_GetObjectItem(j, "n_params");
    CHECK(cJSON_IsNumber(r) && r->valueint == 8);
    CHECK(cJSON_IsNumber(np) && np->valuedouble == 1792);
    cJSON_Delete(j);
    /* a folder whose config is there but the weights are not: named */
    char dir[400], cmd[1200];
    snprintf(dir, sizeof dir, "%s/half", tmp);
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp %s/adapter_config.json %s/", dir, hf, dir);
    CHECK_EQ_INT(system(cmd), 0);
    CHECK_EQ_INT(run(out, sizeof out, "info %s", dir), 1);
    HAS("adapter_model.safetensors: missing");
}

int main(void) {
    if (!getenv("PEFT_CLI")) {
        printf("skip: PEFT_CLI not set (run through ctest)\n");
        return 77;
    }
    snprintf(tmp, sizeof tmp, "/tmp/peft_msgcli_XXXXXX");
    if (!mkdtemp(tmp)) return 1;
    TEST_RUN(data_summary_says_what_was_lost);
    TEST_RUN(json_array_and_unknown_rows_say_what_to_do);
    TEST_RUN(alpaca_and_sharegpt_rows_train);
    TEST_RUN(did_you_mean);
    TEST_RUN(train_help_lists_every_data_kind);
    TEST_RUN(bottleneck_summary_reads_as_count_and_shape);
    TEST_RUN(compute_auto_says_what_and_why);
    TEST_RUN(info_describes_adapters);
    if (test_rm_rf(tmp) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    TEST_MAIN_END();
}
