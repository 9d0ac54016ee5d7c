/* test_run_folder.c — `peft train`'s output folder, interrupts and resume,
 * end to end through the CLI on the tiny fixture model:
 * - a non-empty --out that is not a stopped checkpoint of the same run is
 *   refused with what to type; --overwrite removes every file of the old run
 *   (a stale adapter.gguf, checkpoint folders) and nothing peft did not write;
 * - SIGINT after the first step line: exit 130, one line naming the
 *   checkpoint and the resume command, the checkpoint and adapter on disk;
 *   `peft train --resume DIR` alone then ends with the uninterrupted run's
 *   adapter bytes; SIGTERM: 143;
 * - a resume with options that differ lists them with the saved values; a
 *   resume into a new folder needs no options; a failed resume creates no
 *   folder and a data file that changed is named with what was saved. */
#include "core/core.h"
#include "peft.h"
#include "test.h"
#include "train/plot.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MODEL "tests/fixtures/models/tiny-llama"

static char tmp[256], data[320];

static void write_data(const char *path, int n_rows) {
    FILE *f = fopen(path, "w");
    if (!f) return;
    const char *w[] = {"the", "king", "queen", "lord", "night", "day", "love", "sword", "crown", "heart", "fair"};
    peft_rng r;
    peft_rng_seed(&r, 11);
    for (int i = 0; i < n_rows; i++) {
        fprintf(f, "{\"text\": \"");
        const int len = 5 + (int)(peft_rng_u64(&r) % 30);
        for (int k = 0; k < len; k++) fprintf(f, "%s%s", k ? " " : "", w[peft_rng_u64(&r) % 11]);
        fprintf(f, "\"}\n");
    }
    fclose(f);
}

static bool exists(const char *dir, const char *name) {
    char p[700];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

static void touch(const char *dir, const char *name, const char *text) {
    char p[700];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static bool same_file(const char *a, const char *b) {
    size_t la = 0, lb = 0;
    char *da = test_read_file(a, &la), *db = test_read_file(b, &lb);
    const bool same = da && db && la == lb && memcmp(da, db, la) == 0;
    free(da);
    free(db);
    return same;
}

static const char *common =
    "train --model " MODEL " --seq 48 --batch 4 --lr 3e-3 --dropout 0.1 --target all-linear --threads 1 --seed 5";

static void refuses_a_used_folder_and_overwrite_removes_only_its_files(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char dir[400], args[2048], out[32768];
    snprintf(dir, sizeof dir, "%s/used", tmp);
    snprintf(args, sizeof args, "%s --data %s --steps 5 --quiet --out %s", common, data, dir);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    CHECK(exists(dir, "run.json") && exists(dir, "adapter_model.safetensors"));
    /* the same command again: the run is there, finished */
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 2);
    CHECK_MSG(strstr(out, "holds this run, finished (5 steps)") && strstr(out, "--overwrite"), "%s", out);
    /* another run into it: the difference, and what to type */
    snprintf(args, sizeof args, "%s --data %s --steps 6 --quiet --out %s", common, data, dir);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 2);
    CHECK_MSG(strstr(out, "holds another run") && strstr(out, "--steps 6 (the run's: 5)") && strstr(out, "--overwrite"),
              "%s", out);
    /* --overwrite: the old run's files that the new one would not write go too */
    touch(dir, "adapter.gguf", "stale");
    touch(dir, "loss.png", "stale");
    char ck[500];
    snprintf(ck, sizeof ck, "%s/checkpoint-99", dir);
    mkdir(ck, 0755);
    touch(ck, "optimizer.safetensors", "stale");
    touch(ck, "optimizer.safetensors.tmp.12345", "stale");
    snprintf(args, sizeof args, "%s --data %s --steps 6 --quiet --overwrite --out %s", common, data, dir);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    CHECK_MSG(strstr(out, "--overwrite: removed the previous run from"), "%s", out);
    CHECK(!exists(dir, "adapter.gguf") && !exists(dir, "checkpoint-99"));
    /* loss.png: gone, or where the library draws one, this run's (a PNG, not the stale text) */
    char png[600];
    snprintf(png, sizeof png, "%s/loss.png", dir);
    char *png_bytes = test_read_file(png, NULL);
    CHECK(plot_png_available() ? png_bytes && !memcmp(png_bytes, "\x89PNG", 4) : !png_bytes);
    free(png_bytes);
    CHECK(exists(dir, "adapter_model.safetensors") && exists(dir, "metrics.jsonl"));
    /* a file peft does not write: refused, even with --overwrite, nothing lost */
    touch(dir, "notes.txt", "mine");
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 2);
    CHECK_MSG(strstr(out, "holds files peft did not write (notes.txt)"), "%s", out);
    CHECK(exists(dir, "notes.txt") && exists(dir, "adapter_model.safetensors") && exists(dir, "run.json"));
    /* a folder that is not a run's (an adapter copied there) is never cleared */
    char other[400];
    snprintf(other, sizeof other, "%s/not_a_run", tmp);
    mkdir(other, 0755);
    touch(other, "adapter_config.json", "{}");
    snprintf(args, sizeof args, "%s --data %s --steps 2 --quiet --overwrite --out %s", common, data, other);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 2);
    CHECK_MSG(strstr(out, "not a training run's folder"), "%s", out);
    CHECK(exists(other, "adapter_config.json"));
    /* the log a shell redirect has just created is no reason to refuse */
    snprintf(other, sizeof other, "%s/logged", tmp);
    mkdir(other, 0755);
    touch(other, "train.log", "");
    snprintf(args, sizeof args, "%s --data %s --steps 2 --quiet --out %s", common, data, other);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    CHECK(exists(other, "train.log") && exists(other, "adapter_model.safetensors"));
}

/* Runs the CLI with args, stderr into err; sends sig once a line starting
 * with "step " has come. Returns the exit status (128 + signal when killed). */
static int run_and_signal(const char *args, int sig, char *err, size_t cap) {
    char buf[2048];
    snprintf(buf, sizeof buf, "%s", args);
    char *argv[64];
    int n = 0;
    argv[n++] = getenv("PEFT_CLI");
    for (char *t = strtok(buf, " "); t && n < 63; t = strtok(NULL, " ")) argv[n++] = t;
    argv[n] = NULL;
    int fds[2];
    if (pipe(fds)) return -1;
    fflush(stdout);   /* else the child's freopen writes our buffered lines again */
    const pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        if (!freopen("/dev/null", "w", stdout)) _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    size_t used = 0;
    bool sent = false;
    char line[4096];
    err[0] = '\0';
    while (f && fgets(line, sizeof line, f)) {
        if (!sent && !strncmp(line, "step ", 5)) {
            kill(pid, sig);
            sent = true;
        }
        const size_t l = strlen(line);
        if (used + l + 1 < cap) {
            memcpy(err + used, line, l + 1);
            used += l;
        }
    }
    if (f) fclose(f);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
}

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p++) n++;
    return n;
}

static void sigint_saves_and_resume_alone_is_exact(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char whole[400], cut[400], args[2048], out[32768], err[65536];
    snprintf(whole, sizeof whole, "%s/whole", tmp);
    snprintf(cut, sizeof cut, "%s/cut", tmp);
    /* long enough that the signal comes well before the end */
    snprintf(args, sizeof args, "%s --data %s --steps 300 --quiet --out %s", common, data, whole);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    snprintf(args, sizeof args, "%s --data %s --steps 300 --out %s", common, data, cut);
    CHECK_EQ_INT(run_and_signal(args, SIGINT, err, sizeof err), 130);
    CHECK_MSG(count(err, "peft train: stopped by SIGINT after step ") == 1, "%s", err);
    char want[700];
    snprintf(want, sizeof want, "to continue: peft train --resume %s\n", cut);
    CHECK_MSG(strstr(err, want) != NULL, "no resume command \"%s\" in\n%s", want, err);
    const char *at = strstr(err, "after step ");
    const int k = at ? atoi(at + 11) : -1;
    CHECK_MSG(k >= 1 && k < 300, "stopped at step %d", k);
    char name[64], latest[500];
    snprintf(name, sizeof name, "checkpoint-%d", k);
    snprintf(latest, sizeof latest, "%s/LATEST", cut);
    char *l = test_read_file(latest, NULL);
    CHECK_MSG(l && !strncmp(l, name, strlen(name)), "LATEST names %s, not %s", l ? l : "(none)", name);
    free(l);
    CHECK(exists(cut, "adapter_model.safetensors") && exists(cut, name) && exists(cut, "loss.svg"));
    /* the resume needs nothing but the folder */
    snprintf(args, sizeof args, "train --resume %s --quiet", cut);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    char line[200];
    snprintf(line, sizeof line, "resumed from step %d of 300", k);
    CHECK_MSG(strstr(out, line) != NULL, "no \"%s\" in\n%s", line, out);
    char pa[500], pb[500];
    snprintf(pa, sizeof pa, "%s/adapter_model.safetensors", whole);
    snprintf(pb, sizeof pb, "%s/adapter_model.safetensors", cut);
    CHECK_MSG(same_file(pa, pb), "the resumed run's adapter differs from the uninterrupted run's");
    printf("    stopped at step %d of 300; resumed to the uninterrupted run's adapter bytes\n", k);

    /* SIGTERM: the same, 128 + 15 */
    snprintf(cut, sizeof cut, "%s/term", tmp);
    snprintf(args, sizeof args, "%s --data %s --steps 300 --out %s", common, data, cut);
    CHECK_EQ_INT(run_and_signal(args, SIGTERM, err, sizeof err), 143);
    CHECK_MSG(count(err, "peft train: stopped by SIGTERM after step ") == 1, "%s", err);
    CHECK(exists(cut, "LATEST"));
}

static void resume_checks_options_and_leaves_nothing_when_it_fails(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char run[400], args[2048], out[32768];
    snprintf(run, sizeof run, "%s/saved", tmp);
    snprintf(args, sizeof args, "%s --data %s --steps 10 --save-every 4 --quiet --out %s", common, data, run);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    CHECK(exists(run, "checkpoint-8/run.json"));
    /* options given again must agree; the error says what the run had */
    snprintf(args, sizeof args, "train --resume %s --lr 1e-3 --batch 2 --seed 5", run);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 2);
    CHECK_MSG(strstr(out, "--lr 1e-3 (the run's: 3e-3)") && strstr(out, "--batch 2 (the run's: 4)") &&
                  !strstr(out, "--seed"), "%s", out);
    /* a resume into a new folder: the saved options, the run's end */
    char fork_dir[400];
    snprintf(fork_dir, sizeof fork_dir, "%s/fork", tmp);
    snprintf(args, sizeof args, "train --resume %s/checkpoint-8 --out %s --lr 0.003", run, fork_dir);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    CHECK_MSG(strstr(out, "resumed from step 8 of 10"), "%s", out);
    char pa[500], pb[500];
    snprintf(pa, sizeof pa, "%s/adapter_model.safetensors", run);
    snprintf(pb, sizeof pb, "%s/adapter_model.safetensors", fork_dir);
    CHECK_MSG(same_file(pa, pb), "the resumed run's adapter differs");
    /* a failed resume creates no folder */
    char none[400];
    snprintf(none, sizeof none, "%s/never", tmp);
    snprintf(args, sizeof args, "train --resume %s/missing --out %s", tmp, none);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "no such folder"), "%s", out);
    CHECK(access(none, F_OK) != 0);
    /* the data changed under the run: the trainer says what was saved, and
     * the folder it would have made is gone again */
    write_data(data, 30);
    snprintf(args, sizeof args, "train --resume %s --out %s", run, none);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "it was saved with 60 examples (now 30)"), "%s", out);
    CHECK(access(none, F_OK) != 0);
    write_data(data, 60);
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/peft_run_folder_XXXXXX");
    if (!mkdtemp(tmp)) return 1;
    snprintf(data, sizeof data, "%s/d.jsonl", tmp);
    write_data(data, 60);
    TEST_RUN(refuses_a_used_folder_and_overwrite_removes_only_its_files);
    TEST_RUN(sigint_saves_and_resume_alone_is_exact);
    TEST_RUN(resume_checks_options_and_leaves_nothing_when_it_fails);
    if (test_rm_rf(tmp) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    TEST_MAIN_END();
}
