/* plot.c — the training chart (plot.h): one layout, drawn through a small
 * canvas interface onto SVG text and, when built with cairo, onto a PNG
 * image, so that loss.svg and loss.png cannot disagree. */
#include "train/plot.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef PEFT_HAVE_CAIRO
#include <cairo.h>
#endif

/* ---- the history ------------------------------------------------------------ */

int plot_hist_add(plot_history *h, int step, double loss, double acc, bool is_val, peft_err *err) {
    if (h->n == h->cap) {
        const int cap = h->cap ? 2 * h->cap : 256;
        int *s = realloc(h->step, (size_t)cap * sizeof *s);
        if (s) h->step = s;
        double *l = realloc(h->loss, (size_t)cap * sizeof *l);
        if (l) h->loss = l;
        double *a = realloc(h->acc, (size_t)cap * sizeof *a);
        if (a) h->acc = a;
        bool *v = realloc(h->is_val, (size_t)cap * sizeof *v);
        if (v) h->is_val = v;
        if (!s || !l || !a || !v) return peft_fail(err, PEFT_ERR_NOMEM, "out of memory recording the loss history");
        h->cap = cap;
    }
    h->step[h->n] = step;
    h->loss[h->n] = loss;
    h->acc[h->n] = acc;
    h->is_val[h->n] = is_val;
    h->n++;
    return 0;
}

void plot_hist_free(plot_history *h) {
    free(h->step);
    free(h->loss);
    free(h->acc);
    free(h->is_val);
    memset(h, 0, sizeof *h);
}

/* ---- ticks ------------------------------------------------------------------- */

/* The 1-2-5 step nearest raw (Heckbert's "nice numbers", Graphics Gems). */
static double nice_step(double raw) {
    const double mag = pow(10, floor(log10(raw)));
    const double f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

void plot_nice_ticks(double lo, double hi, int target, bool integer, plot_ticks *out) {
    memset(out, 0, sizeof *out);
    if (!isfinite(lo) || !isfinite(hi)) lo = 0, hi = 1;
    if (lo > hi) { const double t = lo; lo = hi; hi = t; }
    if (!(hi > lo)) {   /* one value: a range around it */
        const double d = lo != 0 ? fabs(lo) * 0.1 : 1;
        lo -= d;
        hi += d;
    }
    if (target < 2) target = 2;
    double step = nice_step((hi - lo) / target);
    if (integer && step < 1) step = 1;
    for (;;) {
        const double k0 = floor(lo / step + 1e-9), k1 = ceil(hi / step - 1e-9);
        const int n = (int)(k1 - k0) + 1;
        if (n <= PLOT_MAX_TICKS) {
            out->step = step;
            out->n = n;
            for (int i = 0; i < n; i++) {
                /* k·step, not a running sum: 0.1 + 0.2 would print 0.30000000000000004 */
                double v = (k0 + i) * step;
                if (fabs(v) < step * 1e-9) v = 0;
                out->v[i] = v;
            }
            out->first = out->v[0];
            out->last = out->v[n - 1];
            return;
        }
        step = nice_step(step * 1.5);
    }
}

void plot_tick_label(double v, double step, char *buf, size_t cap) {
    if (fabs(v) < step * 1e-9 || v == 0) {
        snprintf(buf, cap, "0");
        return;
    }
    if (step >= 1e5 || step < 1e-3) {
        /* mantissa digits down to the step's: 2e-4, 1.5e-4, 3e5 */
        const int ev = (int)floor(log10(fabs(v)) + 1e-9), es = (int)floor(log10(step) + 1e-9);
        const int digits = PEFT_MAX(1, ev - es + 1);
        char t[64];
        snprintf(t, sizeof t, "%.*e", digits - 1, v);
        char *e = strchr(t, 'e');
        if (!e) { snprintf(buf, cap, "%s", t); return; }
        *e = 0;
        const int ex = atoi(e + 1);
        /* 1.50 -> 1.5, 1.0 -> 1 */
        if (strchr(t, '.')) {
            char *z = t + strlen(t) - 1;
            while (*z == '0') *z-- = 0;
            if (*z == '.') *z = 0;
        }
        snprintf(buf, cap, "%se%d", t, ex);
        return;
    }
    const int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
    snprintf(buf, cap, "%.*f", dec, v);
    /* 1.0 -> 1, 0.50 -> 0.5: the digits a value needs, not its step's */
    if (strchr(buf, '.')) {
        char *z = buf + strlen(buf) - 1;
        while (*z == '0') *z-- = 0;
        if (*z == '.') *z = 0;
    }
}

/* ---- canvases ---------------------------------------------------------------- */

enum { ANCHOR_START = -1, ANCHOR_MIDDLE = 0, ANCHOR_END = 1 };

typedef struct canvas canvas;
struct canvas {
    /* a polyline of n points (xy: x0, y0, x1, y1, ...) */
    void (*lines)(canvas *c, const double *xy, int n, const char *color, double width, double alpha, const char *cls);
    void (*marker)(canvas *c, double x, double y, bool square, const char *color, const char *cls);
    void (*rect)(canvas *c, double x, double y, double w, double h, const char *fill, const char *stroke);
    void (*text)(canvas *c, double x, double y, int anchor, bool vertical, double size, const char *color,
                 const char *cls, const char *s);
    bool failed;
};

/* SVG: the chart as text */
typedef struct {
    canvas c;
    peft_buf b;
} svg_canvas;

static void svg_printf(svg_canvas *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void svg_printf(svg_canvas *s, const char *fmt, ...) {
    if (s->c.failed) return;
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    const int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp || peft_buf_append(&s->b, tmp, (size_t)n)) s->c.failed = true;
}

static void svg_lines(canvas *c, const double *xy, int n, const char *color, double width, double alpha, const char *cls) {
    svg_canvas *s = (svg_canvas *)c;
    if (n <= 0) return;
    svg_printf(s, "<polyline class=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"%g\"", cls, color, width);
    if (alpha < 1) svg_printf(s, " stroke-opacity=\"%g\"", alpha);
    svg_printf(s, " stroke-linejoin=\"round\" points=\"");
    for (int i = 0; i < n; i++) svg_printf(s, "%s%.1f,%.1f", i ? " " : "", xy[2 * i], xy[2 * i + 1]);
    svg_printf(s, "\"/>\n");
}

static void svg_marker(canvas *c, double x, double y, bool square, const char *color, const char *cls) {
    svg_canvas *s = (svg_canvas *)c;
    if (square)
        svg_printf(s, "<rect class=\"%s\" x=\"%.1f\" y=\"%.1f\" width=\"7\" height=\"7\" fill=\"%s\" stroke=\"white\"/>\n",
                   cls, x - 3.5, y - 3.5, color);
    else
        svg_printf(s, "<circle class=\"%s\" cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\" stroke=\"white\"/>\n", cls, x, y,
                   color);
}

static void svg_rect(canvas *c, double x, double y, double w, double h, const char *fill, const char *stroke) {
    svg_printf((svg_canvas *)c, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\" stroke=\"%s\"/>\n",
               x, y, w, h, fill ? fill : "none", stroke ? stroke : "none");
}

static void svg_text(canvas *c, double x, double y, int anchor, bool vertical, double size, const char *color,
                     const char *cls, const char *str) {
    svg_canvas *s = (svg_canvas *)c;
    static const char *const anchors[3] = {"start", "middle", "end"};
    svg_printf(s, "<text class=\"%s\" x=\"%.1f\" y=\"%.1f\" font-size=\"%g\" fill=\"%s\" text-anchor=\"%s\"", cls, x, y,
               size, color, anchors[anchor + 1]);
    if (vertical) svg_printf(s, " transform=\"rotate(-90 %.1f %.1f)\"", x, y);
    svg_printf(s, ">");
    /* labels are ours (numbers, names), but escape anyway: the file must stay XML */
    for (const char *p = str; *p; p++) {
        if (*p == '<') svg_printf(s, "&lt;");
        else if (*p == '>') svg_printf(s, "&gt;");
        else if (*p == '&') svg_printf(s, "&amp;");
        else svg_printf(s, "%c", *p);
    }
    svg_printf(s, "</text>\n");
}

/* ---- the layout ---------------------------------------------------------------- */

#define C_TRAIN "#3182bd"
#define C_VAL "#e6550d"
#define C_ACC "#31a354"
#define C_AXIS "#333333"
#define C_GRID "#e5e5e5"

typedef struct {
    double x0, x1, y0, y1;   /* the plot area: left, right, top, bottom */
    plot_ticks xt, yt, at;
} frame;

static double fx(const frame *f, double step) {
    return f->x0 + (step - f->xt.first) / (f->xt.last - f->xt.first) * (f->x1 - f->x0);
}
static double fy(const frame *f, double v) {
    return f->y1 - (v - f->yt.first) / (f->yt.last - f->yt.first) * (f->y1 - f->y0);
}
static double fa(const frame *f, double v) {
    return f->y1 - (v - f->at.first) / (f->at.last - f->at.first) * (f->y1 - f->y0);
}

static int draw(canvas *c, const plot_history *h, peft_err *err) {
    const double W = PLOT_WIDTH, H = PLOT_HEIGHT;
    double lo = INFINITY, hi = -INFINITY, alo = INFINITY, ahi = -INFINITY;
    int smax = 1, n_train = 0, n_val = 0, n_acc = 0;
    for (int i = 0; i < h->n; i++) {
        smax = PEFT_MAX(smax, h->step[i]);
        if (isfinite(h->loss[i])) {
            lo = fmin(lo, h->loss[i]);
            hi = fmax(hi, h->loss[i]);
            n_train += !h->is_val[i];
            n_val += h->is_val[i];
        }
        if (h->is_val[i] && isfinite(h->acc[i])) {
            alo = fmin(alo, h->acc[i]);
            ahi = fmax(ahi, h->acc[i]);
            n_acc++;
        }
    }
    if (!isfinite(lo)) lo = 0, hi = 1;
    const bool acc = n_acc > 0;
    const int legend_rows = ((n_train ? 2 : 0) + (n_val ? 1 : 0) + (acc ? 1 : 0) + 1) / 2;
    frame f = {.x0 = 72, .x1 = W - (acc ? 72 : 24), .y0 = 44 + 18 * legend_rows, .y1 = H - 56};
    plot_nice_ticks(0, smax, 8, true, &f.xt);
    plot_nice_ticks(lo, hi, 6, false, &f.yt);
    if (acc) {
        /* at least a tenth of the scale, inside [0, 1] */
        alo = fmax(0, fmin(alo, ahi - 0.1));
        ahi = fmin(1, fmax(ahi, alo + 0.1));
        if (ahi - alo < 0.1) alo = ahi - 0.1;
        plot_nice_ticks(alo, ahi, 5, false, &f.at);
    }
    c->rect(c, 0, 0, W, H, "white", NULL);
    c->text(c, W / 2, 24, ANCHOR_MIDDLE, false, 15, C_AXIS, "title", acc ? "loss and accuracy" : "loss");
    char lab[64];
    /* grid and ticks */
    for (int i = 0; i < f.yt.n; i++) {
        const double y = fy(&f, f.yt.v[i]), xy[4] = {f.x0, y, f.x1, y};
        c->lines(c, xy, 2, C_GRID, 1, 1, "grid");
        plot_tick_label(f.yt.v[i], f.yt.step, lab, sizeof lab);
        c->text(c, f.x0 - 6, y + 4, ANCHOR_END, false, 12, C_AXIS, "tick-y", lab);
    }
    for (int i = 0; i < f.xt.n; i++) {
        const double x = fx(&f, f.xt.v[i]), xy[4] = {x, f.y1, x, f.y1 + 5};
        c->lines(c, xy, 2, C_AXIS, 1, 1, "tick");
        plot_tick_label(f.xt.v[i], f.xt.step, lab, sizeof lab);
        c->text(c, x, f.y1 + 19, ANCHOR_MIDDLE, false, 12, C_AXIS, "tick-x", lab);
    }
    for (int i = 0; acc && i < f.at.n; i++) {
        const double y = fa(&f, f.at.v[i]), xy[4] = {f.x1, y, f.x1 + 5, y};
        c->lines(c, xy, 2, C_ACC, 1, 1, "tick");
        plot_tick_label(f.at.v[i], f.at.step, lab, sizeof lab);
        c->text(c, f.x1 + 8, y + 4, ANCHOR_START, false, 12, C_ACC, "tick-acc", lab);
    }
    const double box[10] = {f.x0, f.y0, f.x0, f.y1, f.x1, f.y1, f.x1, f.y0, f.x0, f.y0};
    c->lines(c, box, 5, C_AXIS, 1, 1, "axes");
    c->text(c, (f.x0 + f.x1) / 2, H - 14, ANCHOR_MIDDLE, false, 13, C_AXIS, "label", "step");
    c->text(c, 20, (f.y0 + f.y1) / 2, ANCHOR_MIDDLE, true, 13, C_AXIS, "label", "loss");
    if (acc) c->text(c, W - 16, (f.y0 + f.y1) / 2, ANCHOR_MIDDLE, true, 13, C_ACC, "label", "validation accuracy");

    /* the curves' points first (raw train, its EMA, validation, accuracy):
     * the legend goes where it hides the fewest */
    const size_t cap = 2 * (size_t)(h->n > 0 ? h->n : 1);
    double *pts = malloc(sizeof(double) * 4 * cap);
    if (!pts) return peft_fail(err, PEFT_ERR_NOMEM, "out of memory drawing the loss curve");
    double *raw = pts, *sm = pts + cap, *vp = pts + 2 * cap, *ap = pts + 3 * cap;
    int nr = 0, nv = 0, na = 0, k = 0;
    /* TensorBoard's smoothing: an EMA from 0, divided by 1 - w^k so that
     * the first points are not pulled towards 0 */
    double last = 0;
    for (int i = 0; i < h->n; i++) {
        const double x = fx(&f, h->step[i]);
        if (!h->is_val[i] && isfinite(h->loss[i])) {
            last = last * PLOT_EMA_WEIGHT + (1 - PLOT_EMA_WEIGHT) * h->loss[i];
            k++;
            raw[2 * nr] = sm[2 * nr] = x;
            raw[2 * nr + 1] = fy(&f, h->loss[i]);
            sm[2 * nr++ + 1] = fy(&f, last / (1 - pow(PLOT_EMA_WEIGHT, k)));
        }
        if (h->is_val[i] && isfinite(h->loss[i])) {
            vp[2 * nv] = x;
            vp[2 * nv++ + 1] = fy(&f, h->loss[i]);
        }
        if (acc && h->is_val[i] && isfinite(h->acc[i])) {
            ap[2 * na] = x;
            ap[2 * na++ + 1] = fa(&f, h->acc[i]);
        }
    }
    c->lines(c, raw, nr, C_TRAIN, 1, 0.3, "train-raw");
    c->lines(c, sm, nr, C_TRAIN, 2, 1, "train-ema");
    if (nv > 1) c->lines(c, vp, nv, C_VAL, 1.5, 1, "val-line");
    for (int i = 0; i < nv; i++) c->marker(c, vp[2 * i], vp[2 * i + 1], false, C_VAL, "val-point");
    if (na > 1) c->lines(c, ap, na, C_ACC, 1.5, 1, "acc-line");
    for (int i = 0; i < na; i++) c->marker(c, ap[2 * i], ap[2 * i + 1], true, C_ACC, "acc-point");

    free(pts);

    /* the legend: a row or two between the title and the plot, where it
     * hides nothing */
    char ema[64];
    snprintf(ema, sizeof ema, "train loss, smoothed (EMA %.1f)", PLOT_EMA_WEIGHT);
    const char *labels[4];
    int kinds[4], items = 0;   /* 0 raw, 1 smoothed, 2 validation, 3 accuracy */
    if (n_train) { labels[items] = "train loss (each step)"; kinds[items++] = 0; }
    if (n_train) { labels[items] = ema; kinds[items++] = 1; }
    if (n_val) { labels[items] = "validation loss"; kinds[items++] = 2; }
    if (acc) { labels[items] = "validation accuracy (right axis)"; kinds[items++] = 3; }
    for (int i = 0; i < items; i++) {
        const double lx = f.x0 + 8 + (i % 2) * 300, y = 48 + (i / 2) * 18;
        const double a[4] = {lx, y - 4, lx + 26, y - 4};
        static const char *const colors[4] = {C_TRAIN, C_TRAIN, C_VAL, C_ACC};
        static const double widths[4] = {1, 2, 1.5, 1.5}, alphas[4] = {0.3, 1, 1, 1};
        c->lines(c, a, 2, colors[kinds[i]], widths[kinds[i]], alphas[kinds[i]], "legend");
        if (kinds[i] >= 2) c->marker(c, lx + 13, y - 4, kinds[i] == 3, colors[kinds[i]], "legend");
        c->text(c, lx + 34, y, ANCHOR_START, false, 12, C_AXIS, "legend", labels[i]);
    }
    return 0;
}

int plot_svg(const plot_history *h, char **out, size_t *len, peft_err *err) {
    svg_canvas s = {{svg_lines, svg_marker, svg_rect, svg_text, false}, {0}};
    svg_printf(&s, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
               "height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\">\n",
               PLOT_WIDTH, PLOT_HEIGHT, PLOT_WIDTH, PLOT_HEIGHT);
    int rc = draw(&s.c, h, err);
    svg_printf(&s, "</svg>\n");
    /* a failed append leaves a shorter, broken chart: not one to write */
    if (!rc && (s.c.failed || !s.b.data)) rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory drawing the loss curve");
    if (rc) {
        peft_buf_free(&s.b);
        return rc;
    }
    *out = s.b.data;
    *len = s.b.len;
    return 0;
}

/* ---- PNG (cairo) ------------------------------------------------------------------ */

#ifdef PEFT_HAVE_CAIRO
typedef struct {
    canvas c;
    cairo_t *cr;
} png_canvas;

static void set_color(cairo_t *cr, const char *hex, double alpha) {
    unsigned v = (unsigned)strtoul(hex + 1, NULL, 16);
    cairo_set_source_rgba(cr, ((v >> 16) & 255) / 255.0, ((v >> 8) & 255) / 255.0, (v & 255) / 255.0, alpha);
}

static void png_lines(canvas *c, const double *xy, int n, const char *color, double width, double alpha, const char *cls) {
    (void)cls;
    cairo_t *cr = ((png_canvas *)c)->cr;
    if (n <= 0) return;
    cairo_new_path(cr);
    cairo_move_to(cr, xy[0], xy[1]);
    for (int i = 1; i < n; i++) cairo_line_to(cr, xy[2 * i], xy[2 * i + 1]);
    set_color(cr, color, alpha);
    cairo_set_line_width(cr, width);
    cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
    cairo_stroke(cr);
}

static void png_marker(canvas *c, double x, double y, bool square, const char *color, const char *cls) {
    (void)cls;
    cairo_t *cr = ((png_canvas *)c)->cr;
    cairo_new_path(cr);
    if (square) cairo_rectangle(cr, x - 3.5, y - 3.5, 7, 7);
    else cairo_arc(cr, x, y, 4, 0, 2 * M_PI);
    set_color(cr, color, 1);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_set_line_width(cr, 1);
    cairo_stroke(cr);
}

static void png_rect(canvas *c, double x, double y, double w, double h, const char *fill, const char *stroke) {
    cairo_t *cr = ((png_canvas *)c)->cr;
    cairo_new_path(cr);
    cairo_rectangle(cr, x, y, w, h);
    if (fill) {
        set_color(cr, fill[0] == '#' ? fill : "#ffffff", 1);
        cairo_fill_preserve(cr);
    }
    if (stroke) {
        set_color(cr, stroke, 1);
        cairo_set_line_width(cr, 1);
        cairo_stroke(cr);
    }
    cairo_new_path(cr);
}

/* Text in the PNG: a stroke font of our own, drawn as cairo paths. Cairo's
 * own text goes through fontconfig, which costs the process megabytes of
 * font configuration for the first label (more than a training run's
 * memory plan may leave) and keeps it to the end; these strokes cost
 * nothing and draw the same on every machine. A glyph is strokes ('|'
 * between them) of "x,y" points on a grid whose capitals and digits span
 * y 0..10 (10: the baseline), lowercase letters 4..10, descenders to 13. */
typedef struct {
    char c;
    const char *strokes;
} glyph;

static const glyph GLYPHS[] = {
    {'a', "5,4 5,10|5,5 4,4 1,4 0,5 0,9 1,10 4,10 5,9"},
    {'b', "0,0 0,10|0,5 1,4 4,4 5,5 5,9 4,10 1,10 0,9"},
    {'c', "5,5 4,4 1,4 0,5 0,9 1,10 4,10 5,9"},
    {'d', "5,0 5,10|5,5 4,4 1,4 0,5 0,9 1,10 4,10 5,9"},
    {'e', "0,7 5,7 5,5 4,4 1,4 0,5 0,9 1,10 4,10 5,9"},
    {'f', "4,0 3,0 2,1 2,10|0,4 4,4"},
    {'g', "5,4 5,12 4,13 1,13 0,12|5,5 4,4 1,4 0,5 0,9 1,10 4,10 5,9"},
    {'h', "0,0 0,10|0,5 1,4 4,4 5,5 5,10"},
    {'i', "1,4 1,10|1,1.8 1,1.81"},
    {'j', "2,4 2,12 1,13 0,13|2,1.8 2,1.81"},
    {'k', "0,0 0,10|5,4 0,8|2,6.6 5,10"},
    {'l', "1,0 1,10"},
    {'m', "0,4 0,10|0,5 1,4 2,4 3,5 3,10|3,5 4,4 5,4 6,5 6,10"},
    {'n', "0,4 0,10|0,5 1,4 4,4 5,5 5,10"},
    {'o', "1,4 4,4 5,5 5,9 4,10 1,10 0,9 0,5 1,4"},
    {'p', "0,4 0,13|0,5 1,4 4,4 5,5 5,9 4,10 1,10 0,9"},
    {'q', "5,4 5,13|5,5 4,4 1,4 0,5 0,9 1,10 4,10 5,9"},
    {'r', "0,4 0,10|0,6 2,4 4,4"},
    {'s', "5,5 4,4 1,4 0,5 0,6 1,7 4,7 5,8 5,9 4,10 1,10 0,9"},
    {'t', "2,1 2,9 3,10 4,10|0,4 4,4"},
    {'u', "0,4 0,9 1,10 4,10 5,9|5,4 5,10"},
    {'v', "0,4 2.5,10 5,4"},
    {'w', "0,4 1.5,10 3,5 4.5,10 6,4"},
    {'x', "0,4 5,10|5,4 0,10"},
    {'y', "0,4 2.5,10|5,4 2,13 1,13"},
    {'z', "0,4 5,4 0,10 5,10"},
    {'A', "0,10 3,0 6,10|1,7 5,7"},
    {'E', "5,0 0,0 0,10 5,10|0,5 4,5"},
    {'M', "0,10 0,0 3,6 6,0 6,10"},
    {'0', "1,0 4,0 5,1 5,9 4,10 1,10 0,9 0,1 1,0"},
    {'1', "1,2 3,0 3,10|1,10 5,10"},
    {'2', "0,1 1,0 4,0 5,1 5,4 0,10 5,10"},
    {'3', "0,1 1,0 4,0 5,1 5,4 4,5 2,5|4,5 5,6 5,9 4,10 1,10 0,9"},
    {'4', "4,10 4,0 0,7 5,7"},
    {'5', "5,0 0,0 0,4 4,4 5,5 5,9 4,10 1,10 0,9"},
    {'6', "4,0 2,0 0,2 0,9 1,10 4,10 5,9 5,6 4,5 0,5"},
    {'7', "0,0 5,0 2,10"},
    {'8', "1,0 4,0 5,1 5,4 4,5 1,5 0,4 0,1 1,0|1,5 0,6 0,9 1,10 4,10 5,9 5,6 4,5"},
    {'9', "5,5 1,5 0,4 0,1 1,0 4,0 5,1 5,8 3,10 1,10"},
    {'.', "0.5,10 0.5,10.01"},
    {',', "1,9.5 1,10 0,12"},
    {'-', "0,6 4,6"},
    {'+', "0,6 4,6|2,4 2,8"},
    {'(', "2,0 0.5,2.5 0.5,8.5 2,11"},
    {')', "0,0 1.5,2.5 1.5,8.5 0,11"},
    {':', "0.5,5 0.5,5.01|0.5,10 0.5,10.01"},
    {'/', "0,11 4,0"},
};

/* The glyph of ch (an uppercase letter without its own: the lowercase
 * one), or NULL: drawn as a box. */
static const glyph *glyph_of(char ch) {
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < sizeof GLYPHS / sizeof GLYPHS[0]; i++)
            if (GLYPHS[i].c == ch) return &GLYPHS[i];
        if (ch >= 'A' && ch <= 'Z') ch = (char)(ch - 'A' + 'a');
        else break;
    }
    return NULL;
}

/* A glyph's advance in grid units: its widest point plus the gap. */
static double glyph_advance(char ch) {
    if (ch == ' ') return 3;
    const glyph *g = glyph_of(ch);
    if (!g) return 6;
    double w = 0;
    for (const char *p = g->strokes; *p;) {
        char *end;
        const double x = strtod(p, &end);
        w = fmax(w, x);
        p = strchr(end, ',');
        if (!p) break;
        strtod(p + 1, &end);
        p = end;
        while (*p == ' ' || *p == '|') p++;
    }
    return w + 1.8;
}

/* The strokes of s from (0, 0) on the baseline, unit u pixels per grid step. */
static void stroke_text(cairo_t *cr, const char *s, double u) {
    double x0 = 0;
    for (const char *c = s; *c; c++) {
        const glyph *g = *c == ' ' ? NULL : glyph_of(*c);
        if (*c != ' ' && !g) {   /* no glyph: a box, so that nothing vanishes silently */
            cairo_rectangle(cr, x0, -10 * u, 4 * u, 10 * u);
        }
        bool first = true;
        double px = 0, py = 0;
        for (const char *p = g ? g->strokes : ""; *p;) {
            if (*p == '|') { first = true; p++; continue; }
            if (*p == ' ') { p++; continue; }
            char *end;
            const double x = strtod(p, &end);
            if (*end != ',') break;
            const double y = strtod(end + 1, &end);
            if (!first && fabs(x - px) < 0.05 && fabs(y - py) < 0.05) {
                /* a dot ('.', 'i'): a round blob a little wider than the strokes */
                cairo_new_sub_path(cr);
                cairo_arc(cr, x0 + x * u, (y - 10) * u, 0.55 * u, 0, 2 * M_PI);
                cairo_new_sub_path(cr);
            } else if (first) cairo_move_to(cr, x0 + x * u, (y - 10) * u);
            else cairo_line_to(cr, x0 + x * u, (y - 10) * u);
            px = x;
            py = y;
            first = false;
            p = end;
        }
        x0 += glyph_advance(*c) * u;
    }
}

static void png_text(canvas *c, double x, double y, int anchor, bool vertical, double size, const char *color,
                     const char *cls, const char *s) {
    (void)cls;
    cairo_t *cr = ((png_canvas *)c)->cr;
    /* capitals 0.72 of the size tall, as in common sans-serif fonts */
    const double u = size * 0.072;
    double w = 0;
    for (const char *p = s; *p; p++) w += glyph_advance(*p) * u;
    w -= 1.8 * u;   /* no gap after the last glyph */
    cairo_save(cr);
    cairo_translate(cr, x, y);
    if (vertical) cairo_rotate(cr, -M_PI / 2);
    cairo_translate(cr, anchor == ANCHOR_START ? 0 : anchor == ANCHOR_MIDDLE ? -w / 2 : -w, 0);
    cairo_new_path(cr);
    stroke_text(cr, s, u);
    set_color(cr, color, 1);
    cairo_set_line_width(cr, size * 0.085);
    cairo_set_line_cap(cr, CAIRO_LINE_CAP_ROUND);
    cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
    cairo_stroke(cr);
    cairo_restore(cr);
}

static cairo_status_t to_buf(void *closure, const unsigned char *data, unsigned int len) {
    return peft_buf_append(closure, data, len) ? CAIRO_STATUS_WRITE_ERROR : CAIRO_STATUS_SUCCESS;
}
#endif

bool plot_png_available(void) {
#ifdef PEFT_HAVE_CAIRO
    return true;
#else
    return false;
#endif
}

int plot_png(const plot_history *h, const char *path, peft_err *err) {
#ifdef PEFT_HAVE_CAIRO
    cairo_surface_t *sf = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, PLOT_WIDTH, PLOT_HEIGHT);
    cairo_t *cr = cairo_create(sf);
    png_canvas pc = {{png_lines, png_marker, png_rect, png_text, false}, cr};
    int rc = 0;
    if (cairo_status(cr) != CAIRO_STATUS_SUCCESS)
        rc = peft_fail(err, PEFT_ERR_NOMEM, "%s: cairo: %s", path, cairo_status_to_string(cairo_status(cr)));
    if (!rc) rc = draw(&pc.c, h, err);
    peft_buf b = {0};
    if (!rc) {
        cairo_surface_flush(sf);
        const cairo_status_t st = cairo_status(cr) != CAIRO_STATUS_SUCCESS ? cairo_status(cr)
                                                                           : cairo_surface_write_to_png_stream(sf, to_buf, &b);
        if (st != CAIRO_STATUS_SUCCESS)
            rc = peft_fail(err, PEFT_ERR_NOMEM, "%s: drawing the loss curve: cairo: %s", path, cairo_status_to_string(st));
    }
    cairo_destroy(cr);
    cairo_surface_destroy(sf);
    if (!rc) rc = peft_write_file_atomic(path, b.data, b.len, err);
    peft_buf_free(&b);
    return rc;
#else
    (void)h;
    return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: this build has no PNG output (built without cairo: install "
                     "libcairo2-dev and rebuild); loss.svg has the same chart", path);
#endif
}

int plot_write(const plot_history *h, const char *dir, peft_err *err) {
    char path[4200];
    char *svg = NULL;
    size_t len = 0;
    int rc = plot_svg(h, &svg, &len, err);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/loss.svg", dir);
    rc = peft_write_file_atomic(path, svg, len, err);
    free(svg);
    if (rc || !plot_png_available()) return rc;
    snprintf(path, sizeof path, "%s/loss.png", dir);
    return plot_png(h, path, err);
}
