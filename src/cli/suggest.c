/* suggest.c — "did you mean" for mistyped options, method names and
 * commands: the nearest known name by optimal-string-alignment distance
 * (insertions, deletions, substitutions and adjacent swaps cost 1, the
 * distance git and many CLIs use for the same purpose). */
#include "cli.h"

#include <stdio.h>
#include <string.h>

int cli_edit_distance(const char *a, const char *b) {
    enum { MAX = 64 };
    const size_t n = strlen(a), m = strlen(b);
    if (n >= MAX || m >= MAX) return (int)(n > m ? n : m);   /* nothing this long is a near miss worth naming */
    int d[MAX][MAX];
    for (size_t i = 0; i <= n; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= m; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= n; i++)
        for (size_t j = 1; j <= m; j++) {
            const int cost = a[i - 1] != b[j - 1];
            int v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v) v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    return d[n][m];
}

const char *cli_suggest(const char *word, const char *const *names, int n) {
    const char *best = NULL;
    int best_d = 3;   /* at most 2 edits */
    const int len = (int)strlen(word);
    for (int i = 0; i < n; i++) {
        if (!names[i]) continue;
        const int dist = cli_edit_distance(word, names[i]);
        /* a short word is close to everything short: at most half of it may change */
        if (dist < best_d && dist * 2 <= len) {
            best_d = dist;
            best = names[i];
        }
    }
    return best;
}

/* The names tried on one argument (the process's one command line: the
 * CLI's own state, not the library's). */
#define MAX_TRIED 128
static struct {
    char **argv;
    int at, n;
    const char *names[MAX_TRIED];
} tried;

void cli_note_tried(const cli_args *a, const char *name) {
    if (tried.argv != a->argv || tried.at != a->i) {
        tried.argv = a->argv;
        tried.at = a->i;
        tried.n = 0;
    }
    if (tried.n < MAX_TRIED) tried.names[tried.n++] = name;
}

void cli_unknown_option(const cli_args *a) {
    const char *arg = a->i < a->argc ? a->argv[a->i] : "";
    char name[80];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(arg, "="), arg);
    const char *near = tried.argv == a->argv && tried.at == a->i ? cli_suggest(name, tried.names, tried.n) : NULL;
    if (near)
        fprintf(stderr, "peft %s: unknown option \"%s\": did you mean %s? (peft %s --help lists them)\n", a->cmd, arg,
                near, a->cmd);
    else fprintf(stderr, "peft %s: unknown option \"%s\" (peft %s --help lists them)\n", a->cmd, arg, a->cmd);
}
