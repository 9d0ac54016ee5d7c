/* test_plot.c — the training chart (src/train/plot.c): 1-2-5 ticks and
 * their labels; loss.svg is well-formed XML (a small checker here, and
 * Python's xml parser where python3 is installed) with the validation
 * points marked, the smoothed and the raw train curve, the accuracy axis
 * of a classification run and a legend; loss.png (when built with cairo)
 * has the PNG signature and the stated size; and a real run writes both. */
#include "core/core.h"
#include "train/plot.h"
#include "test.h"

#include <ctype.h>

/* Whether step is 1, 2 or 5 times a power of ten. */
static bool is_125(double step) {
    const double m = step / pow(10, floor(log10(step) + 1e-9));
    return fabs(m - 1) < 1e-9 || fabs(m - 2) < 1e-9 || fabs(m - 5) < 1e-9;
}

static void ticks_are_1_2_5_steps_at_round_values(void) {
    struct { double lo, hi; int target; bool integer; double step, first, last; } cases[] = {
        {0, 37, 8, true, 5, 0, 40},        /* the 13, 38: now 0, 5, ... 40 */
        {0, 13, 8, true, 2, 0, 14},
        {0, 3, 8, true, 1, 0, 3},          /* never a fractional step */
        {0, 1000, 8, true, 100, 0, 1000},
        {0.0123, 2.31, 6, false, 0.5, 0, 2.5},
        {1.02e-6, 2.31e-6, 6, false, 2e-7, 1e-6, 2.4e-6},
        {3.2, 3.2, 6, false, 0.1, 2.8, 3.6},  /* one value: a range around it */
        {0.8, 1.0, 5, false, 0.05, 0.8, 1.0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        plot_ticks t;
        plot_nice_ticks(cases[i].lo, cases[i].hi, cases[i].target, cases[i].integer, &t);
        CHECK_MSG(fabs(t.step - cases[i].step) < 1e-12 * fmax(1, cases[i].step) &&
                      fabs(t.first - cases[i].first) < 1e-9 * fmax(1, t.step) &&
                      fabs(t.last - cases[i].last) < 1e-9 * fmax(1, t.step),
                  "case %zu [%g, %g]: step %g first %g last %g", i, cases[i].lo, cases[i].hi, t.step, t.first, t.last);
        CHECK(is_125(t.step));
        CHECK(t.first <= cases[i].lo + 1e-12 && t.last >= cases[i].hi - 1e-12);
        CHECK(t.n >= 2 && t.n <= PLOT_MAX_TICKS);
    }
    /* labels: as few digits as the value needs at that step */
    struct { double v, step; const char *want; } labels[] = {
        {0.5, 0.5, "0.5"}, {1, 0.5, "1"}, {1.5, 0.5, "1.5"}, {0, 0.5, "0"}, {12, 2, "12"}, {0.05, 0.05, "0.05"},
        {0.3, 0.1, "0.3"}, {2e-4, 1e-4, "2e-4"}, {1.5e-4, 5e-5, "1.5e-4"}, {1e-4, 5e-5, "1e-4"}, {3e5, 1e5, "3e5"},
        {-0.5, 0.5, "-0.5"}, {1e-17, 0.1, "0"},
    };
    for (size_t i = 0; i < sizeof labels / sizeof labels[0]; i++) {
        char buf[64];
        plot_tick_label(labels[i].v, labels[i].step, buf, sizeof buf);
        CHECK_MSG(!strcmp(buf, labels[i].want), "label of %g at step %g: \"%s\", want \"%s\"", labels[i].v, labels[i].step,
                  buf, labels[i].want);
    }
}

/* A minimal XML well-formedness check: every tag closed in order,
 * attributes quoted, only the five predefined entities, one root. */
static bool xml_well_formed(const char *s, char *why, size_t cap) {
    const char *stack[64];
    size_t lens[64];
    int depth = 0, roots = 0;
    const char *p = s;
    if (!strncmp(p, "<?xml", 5)) {
        p = strstr(p, "?>");
        if (!p) { snprintf(why, cap, "unterminated XML declaration"); return false; }
        p += 2;
    }
    while (*p) {
        if (*p == '&') {
            static const char *const ents[5] = {"&lt;", "&gt;", "&amp;", "&quot;", "&apos;"};
            bool ok = false;
            for (int k = 0; k < 5; k++) ok |= !strncmp(p, ents[k], strlen(ents[k]));
            if (!ok) { snprintf(why, cap, "bad entity at %.20s", p); return false; }
            p++;
            continue;
        }
        if (*p != '<') {
            if (depth == 0 && !isspace((unsigned char)*p)) { snprintf(why, cap, "text outside the root: %.20s", p); return false; }
            p++;
            continue;
        }
        const bool closing = p[1] == '/';
        const char *name = p + 1 + closing;
        size_t nl = 0;
        while (isalnum((unsigned char)name[nl]) || name[nl] == '-' || name[nl] == ':' || name[nl] == '_') nl++;
        if (!nl) { snprintf(why, cap, "bad tag at %.20s", p); return false; }
        const char *q = name + nl;
        if (closing) {
            if (depth == 0 || lens[depth - 1] != nl || strncmp(stack[depth - 1], name, nl)) {
                snprintf(why, cap, "</%.*s> does not close the open tag", (int)nl, name);
                return false;
            }
            depth--;
            q = strchr(q, '>');
            if (!q) { snprintf(why, cap, "unterminated closing tag"); return false; }
            p = q + 1;
            continue;
        }
        /* attributes: name="value" */
        for (;;) {
            while (isspace((unsigned char)*q)) q++;
            if (*q == '>' || (q[0] == '/' && q[1] == '>')) break;
            const char *an = q;
            while (isalnum((unsigned char)*q) || *q == '-' || *q == ':' || *q == '_') q++;
            if (q == an || *q != '=' || (q[1] != '"' && q[1] != '\'')) {
                snprintf(why, cap, "bad attribute in <%.*s>: %.20s", (int)nl, name, an);
                return false;
            }
            const char quote = q[1];
            const char *end = strchr(q + 2, quote);
            if (!end) { snprintf(why, cap, "unterminated attribute value"); return false; }
            for (const char *c = q + 2; c < end; c++)
                if (*c == '<') { snprintf(why, cap, "'<' in an attribute value"); return false; }
            q = end + 1;
        }
        if (depth == 0) roots++;
        if (*q == '/') p = q + 2;
        else {
            if (depth == 64) { snprintf(why, cap, "too deep"); return false; }
            stack[depth] = name;
            lens[depth++] = nl;
            p = q + 1;
        }
    }
    if (depth) { snprintf(why, cap, "<%.*s> is never closed", (int)lens[depth - 1], stack[depth - 1]); return false; }
    if (roots != 1) { snprintf(why, cap, "%d root elements", roots); return false; }
    return true;
}

static int count(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

/* The texts of the <text class="cls"> elements, each checked to be a nice
 * tick: equally spaced by a 1-2-5 step, each label reading back as its value. */
static void check_tick_labels(const char *svg, const char *cls, int min_ticks) {
    char key[64];
    snprintf(key, sizeof key, "class=\"%s\"", cls);
    double v[64];
    int n = 0;
    for (const char *p = strstr(svg, key); p && n < 64; p = strstr(p + 1, key)) {
        const char *gt = strchr(p, '>');
        CHECK(gt != NULL);
        if (!gt) return;
        char *end;
        v[n] = strtod(gt + 1, &end);
        CHECK_MSG(end != gt + 1 && *end == '<', "%s label \"%.12s\" is not a plain number", cls, gt + 1);
        /* no float noise such as 0.30000000000000004, no 2.31e-06 */
        CHECK_MSG(end - (gt + 1) <= 7, "%s label \"%.*s\" is too long", cls, (int)(end - (gt + 1)), gt + 1);
        CHECK_MSG(!strstr(gt + 1, "e-0") || strstr(gt + 1, "e-0") > end, "%s label with a padded exponent", cls);
        n++;
    }
    CHECK_MSG(n >= min_ticks, "%d %s labels", n, cls);
    if (n < 2) return;
    const double step = v[1] - v[0];
    CHECK_MSG(step > 0 && is_125(step), "%s step %g", cls, step);
    for (int i = 0; i < n; i++) {
        CHECK_MSG(fabs(v[i] / step - round(v[i] / step)) < 1e-6, "%s tick %g is not a multiple of %g", cls, v[i], step);
        if (i) CHECK_NEAR(v[i] - v[i - 1], step, step * 1e-6);
    }
}

/* A classification-like run: 37 train steps, validation every 5 with accuracy. */
static void make_history(plot_history *h, bool with_acc) {
    peft_rng r;
    peft_rng_seed(&r, 3);
    plot_hist_add(h, 0, 1.1, with_acc ? 0.3 : NAN, true, NULL);
    for (int s = 1; s <= 37; s++) {
        plot_hist_add(h, s, 1.2 * exp(-s / 10.0) + 0.2 * peft_rng_uniform(&r), NAN, false, NULL);
        if (s % 5 == 0 || s == 37) plot_hist_add(h, s, exp(-s / 12.0), with_acc ? 0.3 + 0.6 * s / 37 : NAN, true, NULL);
    }
}

static void svg_is_xml_with_markers_curves_and_axes(void) {
    for (int pass = 0; pass < 2; pass++) {
        const bool with_acc = pass == 1;
        plot_history h = {0};
        make_history(&h, with_acc);
        char *svg = NULL;
        size_t len = 0;
        peft_err err = {0};
        CHECK_OK(plot_svg(&h, &svg, &len, &err));
        if (!svg) { plot_hist_free(&h); return; }
        CHECK_EQ_INT(strlen(svg), len);
        char why[256] = "";
        CHECK_MSG(xml_well_formed(svg, why, sizeof why), "loss.svg is not well-formed: %s", why);
        /* 9 validation points (steps 0, 5, ..., 35, 37), each a circle, joined by a line */
        CHECK_EQ_INT(count(svg, "<circle class=\"val-point\""), 9);
        CHECK_EQ_INT(count(svg, "class=\"val-line\""), 1);
        CHECK_EQ_INT(count(svg, "class=\"train-ema\""), 1);
        CHECK_EQ_INT(count(svg, "class=\"train-raw\""), 1);
        CHECK_MSG(strstr(svg, "stroke-opacity=\"0.3\"") != NULL, "the raw train curve is faint");
        CHECK_MSG(strstr(svg, "EMA 0.6") != NULL, "the legend names the smoothing factor");
        CHECK_MSG(strstr(svg, ">validation loss<") != NULL, "legend");
        char wh[64];
        snprintf(wh, sizeof wh, "width=\"%d\" height=\"%d\"", PLOT_WIDTH, PLOT_HEIGHT);
        CHECK(strstr(svg, wh) != NULL);
        check_tick_labels(svg, "tick-x", 4);
        check_tick_labels(svg, "tick-y", 3);
        if (with_acc) {
            CHECK_EQ_INT(count(svg, "<rect class=\"acc-point\""), 9);
            CHECK_EQ_INT(count(svg, "class=\"acc-line\""), 1);
            CHECK_MSG(strstr(svg, ">validation accuracy<") != NULL, "the right axis is named");
            check_tick_labels(svg, "tick-acc", 3);
        } else {
            CHECK_EQ_INT(count(svg, "acc-point"), 0);
            CHECK_EQ_INT(count(svg, "tick-acc"), 0);
        }
        /* the x axis: integers from 0 */
        CHECK_MSG(strstr(svg, "class=\"tick-x\"") && strstr(strstr(svg, "class=\"tick-x\""), ">0<"), "x starts at 0");
        /* Python's parser too, where there is one */
        char *path = test_tmp_file(), cmd[512], out[512];
        test_write_bytes(path, svg, len);
        snprintf(cmd, sizeof cmd, "python3 -c 'import sys, xml.dom.minidom as m; m.parse(sys.argv[1]); print(\"ok\")' %s 2>&1",
                 path);
        const int prc = test_run_shell(cmd, out, sizeof out);
        if (prc != 127) CHECK_MSG(prc == 0 && !strncmp(out, "ok", 2), "python's xml parser: %s", out);
        unlink(path);
        free(path);
        free(svg);
        plot_hist_free(&h);
    }
    /* an empty history (a run that failed before its first step) still draws axes */
    plot_history e = {0};
    char *svg = NULL;
    size_t len = 0;
    char why[256] = "";
    CHECK_OK(plot_svg(&e, &svg, &len, NULL));
    CHECK(svg && xml_well_formed(svg, why, sizeof why));
    free(svg);
}

static unsigned be32(const unsigned char *p) {
    return (unsigned)p[0] << 24 | (unsigned)p[1] << 16 | (unsigned)p[2] << 8 | p[3];
}

static void png_has_the_signature_and_the_stated_size(void) {
    plot_history h = {0};
    make_history(&h, true);
    char *path = test_tmp_file();
    peft_err err = {0};
    const int rc = plot_png(&h, path, &err);
    if (!plot_png_available()) {
        CHECK_EQ_INT(rc, PEFT_ERR_UNSUPPORTED);
        CHECK_MSG(strstr(err.msg, "cairo") != NULL, "%s", err.msg);
        unlink(path);
        free(path);
        plot_hist_free(&h);
        TEST_SKIP_HW("built without cairo: loss.png is off (the refusal was checked)");
    }
    CHECK_MSG(rc == 0, "%s", err.msg);
    size_t len = 0;
    unsigned char *png = (unsigned char *)test_read_file(path, &len);
    CHECK(png && len > 33);
    if (png && len > 33) {
        static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
        CHECK(!memcmp(png, sig, 8));
        CHECK(!memcmp(png + 12, "IHDR", 4));
        CHECK_EQ_INT(be32(png + 16), PLOT_WIDTH);
        CHECK_EQ_INT(be32(png + 20), PLOT_HEIGHT);
        CHECK(len > 5000);   /* a drawn chart, not an empty image */
    }
    free(png);
    unlink(path);
    free(path);
    plot_hist_free(&h);
}

static void a_classification_run_plots_accuracy(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char *dir = test_tmp_file(), data[512], args[2048], out[8192], p[600];
    unlink(dir);
    mkdir(dir, 0755);
    snprintf(data, sizeof data, "%s/d.jsonl", dir);
    FILE *f = fopen(data, "w");
    static const char *const rows[3] = {"a dull, boring movie", "it was fine I guess", "the film was wonderful"};
    for (int i = 0; i < 40; i++) fprintf(f, "{\"text\": \"%s %d\", \"label\": %d}\n", rows[i % 3], i, i % 3);
    fclose(f);
    snprintf(args, sizeof args, "train --model tests/fixtures/models/tiny-bert --data %s --out %s/run --steps 12 --r 4 "
             "--lr 1e-2 --val-split 0.25 --eval-every 4 --threads 1 --quiet", data, dir);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    snprintf(p, sizeof p, "%s/run/loss.svg", dir);
    char *svg = test_read_file(p, NULL);
    CHECK_MSG(svg != NULL, "no %s: %s", p, out);
    if (svg) {
        char why[256] = "";
        CHECK_MSG(xml_well_formed(svg, why, sizeof why), "%s", why);
        /* validation at steps 0, 4, 8, 12, with accuracy */
        CHECK_EQ_INT(count(svg, "<circle class=\"val-point\""), 4);
        CHECK_EQ_INT(count(svg, "<rect class=\"acc-point\""), 4);
        check_tick_labels(svg, "tick-x", 4);
    }
    free(svg);
    snprintf(p, sizeof p, "%s/run/loss.png", dir);
    CHECK_EQ_INT(access(p, F_OK) == 0, plot_png_available());
    test_rm_rf(dir);
    free(dir);
}

int main(void) {
    TEST_RUN(ticks_are_1_2_5_steps_at_round_values);
    TEST_RUN(svg_is_xml_with_markers_curves_and_axes);
    TEST_RUN(png_has_the_signature_and_the_stated_size);
    TEST_RUN(a_classification_run_plots_accuracy);
    TEST_MAIN_END();
}
