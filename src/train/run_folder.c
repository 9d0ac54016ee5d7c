/* run_folder.c — what a training run's folder holds, for a new run that is
 * given it (peft.h, peft_run_folder_*): whether it is empty, a run of
 * peft's (and which checkpoint it can resume from, of which run), or holds
 * files peft never writes. Clearing removes only names the trainer (or
 * `peft export`) writes, so an output folder pointed at a user's own files
 * loses nothing. */
#include "core/ctx.h"
#include "core/limits.h"
#include "formats/safetensors.h"
#include "train/trainer.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* What training writes in its folder: the adapter, or a model (full
 * fine-tuning: weights, config and tokenizer files copied from an HF base),
 * metrics and plots, the run's description and checkpoint pointer; and
 * `peft export`'s default output. */
static const char *const run_names[] = {
    "adapter_config.json", "adapter_model.safetensors", "adapter.gguf", "metrics.jsonl", "loss.svg", "loss.png",
    "run.json", "LATEST", "trainer_state.json", "model.safetensors", "model.gguf", "config.json",
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "tokenizer.model", "chat_template.jinja", NULL};
/* What a checkpoint-<step> folder holds. */
static const char *const ckpt_names[] = {"adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
                                         "trainer_state.json", "run.json", NULL};
/* Files only training writes: a folder with one of them is a run's. */
static const char *const run_markers[] = {"run.json", "metrics.jsonl", "LATEST", NULL};

static bool all_digits(const char *s) {
    if (!*s) return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9') return false;
    return true;
}

/* name, or name's temporary of an atomic write (<name>.tmp.<pid>) that a
 * killed process left */
static bool known_name(const char *name, const char *const *names) {
    for (int i = 0; names[i]; i++) {
        const size_t n = strlen(names[i]);
        if (!strncmp(name, names[i], n) && (!name[n] || (!strncmp(name + n, ".tmp.", 5) && all_digits(name + n + 5))))
            return true;
    }
    return false;
}

static bool checkpoint_name(const char *name) {
    return !strncmp(name, "checkpoint-", 11) && all_digits(name + 11);
}

/* Appends ", name" to a list, or "..." once it is full. */
static void list_add(char *list, size_t cap, const char *prefix, const char *name) {
    size_t o = strlen(list);
    if (o >= 3 && !strcmp(list + o - 3, "...")) return;
    const size_t need = (o ? 2 : 0) + strlen(prefix) + strlen(name);
    if (o + need + 5 > cap) {
        snprintf(list + o, cap - o, "%s...", o ? ", " : "");
        return;
    }
    snprintf(list + o, cap - o, "%s%s%s", o ? ", " : "", prefix, name);
}

/* Whether every entry of the checkpoint folder dir/name is one a checkpoint
 * holds; the others go to foreign as "name/entry". */
static bool checkpoint_clean(const char *dir, const char *name, char *foreign, size_t cap) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    DIR *d = opendir(p);
    if (!d) {
        list_add(foreign, cap, "", name);
        return false;
    }
    bool clean = true;
    char prefix[300];
    snprintf(prefix, sizeof prefix, "%s/", name);
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char q[4600];
        struct stat st;
        snprintf(q, sizeof q, "%s/%s", p, e->d_name);
        if (!known_name(e->d_name, ckpt_names) || lstat(q, &st) != 0 || !S_ISREG(st.st_mode)) {
            list_add(foreign, cap, prefix, e->d_name);
            clean = false;
        }
    }
    closedir(d);
    return clean;
}

/* A small JSON file, parsed; NULL (and no error) when it does not exist. */
static int read_json(const char *path, cJSON **out, peft_err *err) {
    *out = NULL;
    if (!peft_file_exists(path)) return 0;
    char *text = NULL;
    size_t len = 0;
    int rc = peft_read_file_max(path, PEFT_MAX_CONFIG_BYTES, &text, &len, err);
    if (rc) return rc;
    *out = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: not a JSON object (or out of memory)", path);
    }
    return 0;
}

static int json_int(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 2147483647.0 ? (int)v->valuedouble : dflt;
}

/* The run folder a checkpoint folder belongs to: its parent. */
static void parent_of(const char *dir, char *out, size_t cap) {
    snprintf(out, cap, "%s", dir);
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/') out[--n] = '\0';
    char *slash = strrchr(out, '/');
    if (!slash) snprintf(out, cap, ".");
    else if (slash == out) out[1] = '\0';
    else *slash = '\0';
}

static int inspect(const char *dir, peft_run_folder *out, peft_err *err) {
    memset(out, 0, sizeof *out);
    out->step = out->total_steps = -1;
    struct stat st;
    if (stat(dir, &st) != 0) {
        if (errno == ENOENT) return 0;
        return peft_fail(err, PEFT_ERR_IO, "%s: %s", dir, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) return peft_fail(err, PEFT_ERR_INVALID, "%s: not a folder", dir);
    out->exists = 1;
    DIR *d = opendir(dir);
    if (!d) return peft_fail(err, PEFT_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    bool own_checkpoint = false;   /* dir is itself a checkpoint folder */
    for (struct dirent *e; (e = readdir(d));) {
        const char *name = e->d_name;
        if (!strcmp(name, ".") || !strcmp(name, "..")) continue;
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", dir, name);
        struct stat es;
        const bool ok = lstat(p, &es) == 0;
        /* an empty file of another name holds nothing to lose: the log a
         * shell redirect (`2> run/train.log`) has just created */
        if (ok && S_ISREG(es.st_mode) && es.st_size == 0 && !known_name(name, run_names)) continue;
        out->n_entries++;
        if (ok && S_ISDIR(es.st_mode) && checkpoint_name(name)) {
            if (checkpoint_clean(dir, name, out->foreign, sizeof out->foreign))
                list_add(out->peft_files, sizeof out->peft_files, "", name);
        } else if (ok && !S_ISDIR(es.st_mode) && known_name(name, run_names)) {
            list_add(out->peft_files, sizeof out->peft_files, "", name);
            out->is_run |= known_name(name, run_markers);
            out->n_temporaries += strstr(name, ".tmp.") != NULL;
        } else {
            own_checkpoint |= !strcmp(name, "optimizer.safetensors");
            list_add(out->foreign, sizeof out->foreign, "", name);
        }
    }
    closedir(d);

    /* the checkpoint: LATEST's, or the folder itself */
    char latest[4200];
    snprintf(latest, sizeof latest, "%s/LATEST", dir);
    snprintf(out->run_dir, sizeof out->run_dir, "%s", dir);
    if (peft_file_exists(latest)) {
        char *name = NULL;
        int rc = peft_read_file_max(latest, 256, &name, NULL, err);
        if (rc) return rc;
        name[strcspn(name, "\r\n")] = '\0';
        const bool good = checkpoint_name(name);
        if (good) snprintf(out->checkpoint, sizeof out->checkpoint, "%s/%s", dir, name);
        free(name);
        if (!good) return peft_fail(err, PEFT_ERR_FORMAT, "%s: does not name a checkpoint-<step> folder", latest);
    } else if (own_checkpoint) {
        snprintf(out->checkpoint, sizeof out->checkpoint, "%s", dir);
        parent_of(dir, out->run_dir, sizeof out->run_dir);
    }
    cJSON *ck = NULL, *run = NULL;
    int rc = 0;
    if (out->checkpoint[0]) {
        char p[4200];
        snprintf(p, sizeof p, "%s/optimizer.safetensors", out->checkpoint);
        st_archive *sa = NULL;
        if (peft_file_exists(p) && !st_open(p, &sa, err)) {
            out->has_checkpoint = 1;
            const char *s = st_metadata(sa, "step"), *t = st_metadata(sa, "total_steps");
            if (s) out->step = atoi(s);
            if (t) out->total_steps = atoi(t);
            st_close(sa);
        } else if (peft_file_exists(p)) {
            return err->code;
        }
        snprintf(p, sizeof p, "%s/run.json", out->checkpoint);
        if (out->has_checkpoint && (rc = read_json(p, &ck, err))) return rc;
    }
    char p[4200];
    snprintf(p, sizeof p, "%s/run.json", out->run_dir);
    if ((rc = read_json(p, &run, err))) {
        cJSON_Delete(ck);
        return rc;
    }
    if (run) {
        out->finished = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(run, "finished"));
        if (!out->has_checkpoint) out->step = json_int(run, "step", -1);
        if (out->total_steps < 0) out->total_steps = json_int(run, "total_steps", -1);
    }
    if (ck && out->total_steps < 0) out->total_steps = json_int(ck, "total_steps", -1);
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(ck ? ck : run, "config");
    if (cJSON_IsObject(cfg)) {
        out->run_config = cJSON_PrintUnformatted(cfg);
        if (!out->run_config) rc = peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", p);
    }
    cJSON_Delete(ck);
    cJSON_Delete(run);
    return rc;
}

int peft_run_folder_inspect(const char *dir, peft_run_folder *out, peft_error *err) {
    peft_err e = {0};
    const int rc = inspect(dir, out, &e);
    if (rc) {
        peft_run_folder_release(out);
        return peft_error_set(err, &e);
    }
    return 0;
}

void peft_run_folder_release(peft_run_folder *f) {
    if (!f) return;
    free(f->run_config);
    f->run_config = NULL;
}

/* The entries of dir, collected before any is removed (removing while
 * reading a folder may skip entries). */
static int list_dir(const char *dir, char ***names, int *n, peft_err *err) {
    *names = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return peft_fail(err, PEFT_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    int cap = 0, rc = 0;
    for (struct dirent *e; !rc && (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 32;
            char **g = realloc(*names, (size_t)cap * sizeof *g);
            if (!g) { rc = peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", dir); break; }
            *names = g;
        }
        if (!((*names)[*n] = strdup(e->d_name))) rc = peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", dir);
        else (*n)++;
    }
    closedir(d);
    return rc;
}

static void free_names(char **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

static int remove_entry(const char *dir, const char *name, peft_err *err) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int rc = 0;
    if (checkpoint_name(name) && peft_is_dir(p)) {
        char **names;
        int n;
        rc = list_dir(p, &names, &n, err);
        for (int i = 0; !rc && i < n; i++) {
            char q[4600];
            snprintf(q, sizeof q, "%s/%s", p, names[i]);
            if (unlink(q) != 0) rc = peft_fail(err, PEFT_ERR_IO, "%s: cannot remove: %s", q, strerror(errno));
        }
        free_names(names, n);
        if (!rc && rmdir(p) != 0) rc = peft_fail(err, PEFT_ERR_IO, "%s: cannot remove: %s", p, strerror(errno));
    } else if (unlink(p) != 0 && errno != ENOENT) {
        rc = peft_fail(err, PEFT_ERR_IO, "%s: cannot remove: %s", p, strerror(errno));
    }
    return rc;
}

static int clear(const char *dir, peft_err *err) {
    peft_run_folder f;
    int rc = inspect(dir, &f, err);
    free(f.run_config);
    if (rc || !f.exists || f.n_entries == 0) return rc;
    if (f.foreign[0])
        return peft_fail(err, PEFT_ERR_INVALID, "%s holds files peft did not write (%s): nothing was removed; move them "
                         "away or choose another output folder", dir, f.foreign);
    if (!f.is_run && f.n_temporaries != f.n_entries)
        return peft_fail(err, PEFT_ERR_INVALID, "%s is not a training run's folder (no run.json, metrics.jsonl or "
                         "LATEST): nothing was removed", dir);
    /* LATEST first, run.json last: a clear stopped halfway leaves no
     * pointer to a checkpoint that is half gone, and still says whose
     * folder it is */
    if ((rc = remove_entry(dir, "LATEST", err))) return rc;
    char **names;
    int n;
    rc = list_dir(dir, &names, &n, err);
    for (int i = 0; !rc && i < n; i++)
        if ((known_name(names[i], run_names) || checkpoint_name(names[i])) && strcmp(names[i], "run.json"))
            rc = remove_entry(dir, names[i], err);
    free_names(names, n);
    if (!rc) rc = remove_entry(dir, "run.json", err);
    return rc;
}

int peft_run_folder_clear(const char *dir, peft_error *err) {
    peft_err e = {0};
    return clear(dir, &e) ? peft_error_set(err, &e) : 0;
}
