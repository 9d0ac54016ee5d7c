/* plot.h — the training run's chart: loss.svg, and loss.png where the
 * library was built with cairo (optional at build time, pkg-config
 * "cairo"). One layout drawn on two canvases, so the two files show the
 * same chart:
 *   - train loss raw (faint) and smoothed (TensorBoard's debiased EMA,
 *     weight PLOT_EMA_WEIGHT, named in the legend), against the step;
 *   - validation loss as circles joined by a line;
 *   - validation accuracy (classification runs) as squares on a second
 *     axis, at the right;
 *   - axes with "nice" ticks (1-2-5 steps: 0.5, 1, 2e-4; integer steps),
 *     light grid lines, a legend. */
#ifndef PEFT_TRAIN_PLOT_H
#define PEFT_TRAIN_PLOT_H

#include "core/core.h"

/* The chart's size in pixels (the SVG's user units, the PNG's pixels). */
#define PLOT_WIDTH 800
#define PLOT_HEIGHT 460
/* The EMA weight of the smoothed train curve (TensorBoard's default 0.6). */
#define PLOT_EMA_WEIGHT 0.6

/* What a run recorded: train points (loss) and validation points (loss,
 * and accuracy or NAN), in the order they happened. */
typedef struct {
    int n, cap;
    int *step;
    double *loss;
    double *acc;
    bool *is_val;
} plot_history;

int plot_hist_add(plot_history *h, int step, double loss, double acc, bool is_val, peft_err *err);
void plot_hist_free(plot_history *h);

/* Ticks of an axis over [lo, hi]: about `target` of them, a step of 1, 2 or
 * 5 times a power of ten (at least 1 when integer), the axis widened to
 * the ticks around the data (first = floor(lo/step)·step, last =
 * ceil(hi/step)·step). */
#define PLOT_MAX_TICKS 24
typedef struct {
    double first, last, step;
    int n;
    double v[PLOT_MAX_TICKS];
} plot_ticks;
void plot_nice_ticks(double lo, double hi, int target, bool integer, plot_ticks *out);
/* A tick's label with the digits it needs at its step: "0.5", "1", "12", "0.05";
 * for steps below 1e-3 or from 1e5, "2e-4", "1.5e-4", "3e5". */
void plot_tick_label(double v, double step, char *buf, size_t cap);

/* The chart as SVG text (*out malloc'ed, *len bytes). */
int plot_svg(const plot_history *h, char **out, size_t *len, peft_err *err);
/* Whether loss.png can be drawn (built with cairo). */
bool plot_png_available(void);
/* The chart as a PNG file, written atomically; PEFT_ERR_UNSUPPORTED
 * without cairo. */
int plot_png(const plot_history *h, const char *path, peft_err *err);
/* dir/loss.svg, and dir/loss.png where available. */
int plot_write(const plot_history *h, const char *dir, peft_err *err);

#endif
