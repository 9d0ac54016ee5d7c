/* lora.c — LoRA adapter configuration, target parsing, allocation and
 * initialisation (as Hugging Face PEFT does it).
 *
 * Layout: modules are ordered layer-major, then by model_linear_role; each
 * module owns A (r, in) followed by B (out, r) in one contiguous f32 params
 * block, and the same offsets in the grads block. */
#include "peft/lora.h"
#include "peft/method.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

lora_config lora_default_config(void) {
    lora_config c;
    memset(&c, 0, sizeof c);
    c.r = 8;
    c.alpha = 16.0f;
    c.dropout = 0.0f;
    c.rslora = false;
    c.init = LORA_INIT_KAIMING;
    c.targets = 0;   /* the architecture's default: see lora_default_targets */
    c.layers = 0;    /* all layers */
    c.seed = 42;
    return c;
}

uint32_t lora_default_targets(const peft_model *m) {
    /* HF peft's default target_modules for the model type */
    return m->cfg.desc->lora_targets;
}

float lora_scale(const lora_config *c) {
    if (c->r <= 0) return 0.0f;
    return c->rslora ? c->alpha / sqrtf((float)c->r) : c->alpha / (float)c->r;
}

float lora_scale_r(const lora_config *c, int r) {
    lora_config t = *c;
    t.r = r;
    return lora_scale(&t);
}

void lora_module_set_alpha(lora_module *md, const lora_config *cfg, float alpha) {
    lora_config t = *cfg;
    t.alpha = alpha;
    md->alpha = alpha;
    md->scale = lora_scale_r(&t, md->r);
}

/* ---- target names ---------------------------------------------------------- */

uint32_t lora_all_linear_targets(const peft_model *m) {
    /* Every linear inside the blocks; the output head is never a target
     * (HF PEFT's "all-linear" excludes it too). */
    uint32_t t = 0;
    for (int r = 0; r < ROLE_N_LINEAR; r++)
        if (m->cfg.n_layer > 0 && m->layers && m->layers[0].lin[r].present) t |= 1u << r;
    if (!t) {
        /* no layers loaded: every linear the architecture names */
        for (int r = 0; r < ROLE_N_LINEAR; r++)
            if (m->cfg.desc->hf_lin[r]) t |= 1u << r;
    }
    return t;
}

int lora_parse_targets(const peft_model *m, const char *list, uint32_t *targets, peft_err *err) {
    *targets = 0;
    const char *arch = m->cfg.arch_name[0] ? m->cfg.arch_name : "this model";
    const char *expect = m->cfg.desc->target_help;
    if (!list) return peft_fail(err, PEFT_ERR_INVALID, "target modules: no list given (expected %s)", expect);
    uint32_t t = 0;
    int n = 0;
    const char *p = list;
    while (*p) {
        while (*p == ',' || isspace((unsigned char)*p)) p++;
        if (!*p) break;
        const char *s = p;
        while (*p && *p != ',') p++;
        const char *e = p;
        while (e > s && isspace((unsigned char)e[-1])) e--;
        size_t len = (size_t)(e - s);
        char name[64];
        if (len >= sizeof name)
            return peft_fail(err, PEFT_ERR_INVALID, "target modules: unknown module '%.*s' for %s (expected %s)",
                             (int)PEFT_MIN(len, 80), s, arch, expect);
        memcpy(name, s, len);
        name[len] = 0;
        n++;
        if (strcmp(name, "all-linear") == 0) {
            t |= lora_all_linear_targets(m);
            continue;
        }
        uint32_t bits = 0;
        for (const arch_target *tn = m->cfg.desc->targets; tn->name; tn++)
            if (strcmp(tn->name, name) == 0) bits = tn->roles;
        if (!bits)
            return peft_fail(err, PEFT_ERR_INVALID, "target modules: unknown module '%s' for %s (expected %s)", name,
                             arch, expect);
        t |= bits;
    }
    if (n == 0) return peft_fail(err, PEFT_ERR_INVALID, "target modules: empty list (expected %s)", expect);
    *targets = t;
    return 0;
}

int lora_target_names(const peft_model *m, uint32_t targets, const char **names, int cap) {
    /* the descriptor's names in order, each taken when it selects only
     * targeted roles and adds one not yet named (GPT-2: "c_proj" for both
     * projections, "attn.c_proj" or "mlp.c_proj" for one) */
    int n = 0;
    uint32_t named = 0;
    for (const arch_target *tn = m->cfg.desc->targets; tn->name; tn++) {
        if ((tn->roles & ~targets) || !(tn->roles & ~named)) continue;
        if (n < cap) names[n] = tn->name;
        n++;
        named |= tn->roles;
    }
    return n;
}

/* ---- allocation ------------------------------------------------------------ */

bool lora_layer_selected(uint64_t layers, int l) {
    if (layers == 0) return true;
    return l < 64 && (layers >> l) & 1u;
}

/* The LoRA state of a (its priv), registered tensors per module: A, B and
 * DoRA's magnitude, in slot order; lora_wire points the modules at
 * them once the block is allocated. */
int lora_setup(adapter *a, const peft_model *m, const lora_config *cfg, const int *slot_r, peft_err *err) {
    const int nl = m->cfg.n_layer, ns = nl * ROLE_N_LINEAR;
    int n_mod = 0;
    uint64_t layers = 0;
    bool all = true;
    for (int l = 0; l < nl; l++) {
        bool any = false;
        for (int r = 0; r < ROLE_N_LINEAR; r++) any |= slot_r[l * ROLE_N_LINEAR + r] > 0;
        if (any && l < 64) layers |= (uint64_t)1 << l;
        all &= any;
    }
    for (int s = 0; s < ns; s++) n_mod += slot_r[s] > 0;
    lora_state *st = peft_calloc(1, sizeof *st, err);
    if (!st) return PEFT_ERR_NOMEM;
    a->priv = st;
    st->cfg = *cfg;
    /* layers_to_transform as the file will say it: the layers with modules */
    a->mc.layers = all ? 0 : layers;
    st->n_modules = n_mod;
    st->mods = peft_calloc((size_t)(n_mod ? n_mod : 1), sizeof *st->mods, err);
    st->slot = peft_calloc((size_t)(ns ? ns : 1), sizeof *st->slot, err);
    if (!st->mods || !st->slot) return PEFT_ERR_NOMEM;
    int k = 0;
    for (int s = 0; s < ns; s++) {
        if (slot_r[s] <= 0) continue;
        const model_linear *lin = &m->layers[s / ROLE_N_LINEAR].lin[s % ROLE_N_LINEAR];
        lora_module *md = &st->mods[k++];
        md->layer = s / ROLE_N_LINEAR;
        md->role = (model_linear_role)(s % ROLE_N_LINEAR);
        md->in = (int)lin->w.cols;
        md->out = (int)lin->w.rows;
        md->r = slot_r[s];
        md->alpha = cfg->alpha;
        md->scale = lora_scale_r(cfg, md->r);
        char path[200], key[256];
        if (model_linear_hf_path(m, md->layer, md->role, path, sizeof path))
            return peft_fail(err, PEFT_ERR_INVALID, "%s: layer %d has no HF module name", m->path, md->layer);
        snprintf(key, sizeof key, "base_model.model.%s.lora_A.weight", path);
        if (adapter_add_tensor(a, key, 2, md->r, md->in, true, err) < 0) return PEFT_ERR_NOMEM;
        snprintf(key, sizeof key, "base_model.model.%s.lora_B.weight", path);
        int ib = adapter_add_tensor(a, key, 2, md->out, md->r, true, err);
        if (ib < 0) return PEFT_ERR_NOMEM;
        adapter_tensor_set_group(a, ib, PG_LORA_B);
        if (cfg->dora) {
            snprintf(key, sizeof key, "base_model.model.%s.lora_magnitude_vector", path);
            /* 1-D: LoRA+'s group B too (create_loraplus_optimizer) */
            int im = adapter_add_tensor(a, key, 1, md->out, 1, true, err);
            if (im < 0) return PEFT_ERR_NOMEM;
            adapter_tensor_set_group(a, im, PG_LORA_B);
        }
        st->slot[s] = md;
    }
    return 0;
}

void lora_wire(adapter *a) {
    lora_state *st = lora_of(a);
    const int per = st->cfg.dora ? 3 : 2;
    for (int i = 0; i < st->n_modules; i++) {
        lora_module *md = &st->mods[i];
        md->A = a->tensors[per * i].p;
        md->gA = a->tensors[per * i].g;
        md->B = a->tensors[per * i + 1].p;
        md->gB = a->tensors[per * i + 1].g;
        if (st->cfg.dora) {
            md->mag = a->tensors[per * i + 2].p;
            md->gmag = a->tensors[per * i + 2].g;
        }
    }
}

int lora_alloc(const peft_model *m, const lora_config *cfg, const int *slot_r, int n_labels, adapter **out,
               peft_err *err) {
    *out = NULL;
    adapter *a = peft_calloc(1, sizeof *a, err);
    if (!a) return PEFT_ERR_NOMEM;
    a->ops = cfg->dora ? &method_dora : &method_lora;
    a->mc.ops = a->ops;
    a->mc.r = cfg->r;
    a->mc.alpha = cfg->alpha;
    a->mc.dropout = cfg->dropout;
    a->mc.targets = cfg->targets;
    a->mc.n_labels = n_labels;
    a->mc.seed = cfg->seed;
    adapter_set_signature(a, m);
    /* registry: per module A, B (and DoRA's magnitude), then the head */
    int rc = lora_setup(a, m, cfg, slot_r, err);
    int head = rc ? -1 : mts_head_add(a, m, n_labels, err);
    if (rc || (n_labels > 0 && head < 0) || (rc = adapter_finish_alloc(a, err))) {
        adapter_free(a);
        return rc ? rc : err->code ? err->code : PEFT_ERR_NOMEM;
    }
    lora_wire(a);
    mts_head_wire(a, m, head, cfg->seed);
    *out = a;
    return 0;
}

int lora_plan(const peft_model *m, const lora_config *cfg, lora_config *out, int **slot_r, peft_err *err) {
    *slot_r = NULL;
    if (cfg->r <= 0 || cfg->r > 65536)
        return peft_fail(err, PEFT_ERR_INVALID, "LoRA: rank r must be in 1..65536, got %d", cfg->r);
    if (!(cfg->dropout >= 0.0f && cfg->dropout < 1.0f))
        return peft_fail(err, PEFT_ERR_INVALID, "LoRA: dropout must be in [0, 1), got %g", (double)cfg->dropout);
    if (cfg->dora && cfg->dropout > 0)
        return peft_fail(err, PEFT_ERR_INVALID, "DoRA: dropout is not supported (HF PEFT recomputes the base output on "
                                                "the dropped input; peft.c does not)");
    if (!isfinite(cfg->alpha))
        return peft_fail(err, PEFT_ERR_INVALID, "LoRA: alpha must be finite");
    const int nl = m->cfg.n_layer;
    if (cfg->layers && (nl >= 64 ? false : (cfg->layers >> nl) != 0)) {
        int hi = 63;
        while (!((cfg->layers >> hi) & 1u)) hi--;
        return peft_fail(err, PEFT_ERR_INVALID, "LoRA: layer %d selected but %s has %d layers", hi, m->path, nl);
    }
    lora_config c = *cfg;
    if (!c.targets) c.targets = lora_default_targets(m);
    for (int r = 0; r < ROLE_N_LINEAR; r++)
        if ((c.targets & (1u << r)) && (nl == 0 || !m->layers[0].lin[r].present))
            return peft_fail(err, PEFT_ERR_INVALID, "LoRA: target role %d does not exist in %s (%s)", r, m->path,
                             m->cfg.arch_name);
    if (c.targets >> ROLE_N_LINEAR)
        return peft_fail(err, PEFT_ERR_INVALID, "LoRA: target bits 0x%x name no linear", (unsigned)c.targets);
    int *sr = peft_calloc((size_t)(nl ? nl : 1) * ROLE_N_LINEAR, sizeof(int), err);
    if (!sr) return PEFT_ERR_NOMEM;
    int n = 0;
    for (int l = 0; l < nl; l++)
        for (int r = 0; r < ROLE_N_LINEAR; r++)
            if (lora_layer_selected(c.layers, l) && (c.targets & (1u << r)) && m->layers[l].lin[r].present) {
                sr[l * ROLE_N_LINEAR + r] = c.r;
                n++;
            }
    if (n == 0) {
        free(sr);
        return model_no_targets(m, "LoRA", err);
    }
    *out = c;
    *slot_r = sr;
    return 0;
}

int lora_init_values(adapter *a, const peft_model *m, peft_rng *rng, peft_err *err) {
    lora_state *st = lora_of(a);
    for (int i = 0; i < st->n_modules; i++) {
        lora_module *md = &st->mods[i];
        const int64_t na = (int64_t)md->r * md->in, nb = (int64_t)md->out * md->r;
        switch (st->cfg.init) {
        case LORA_INIT_GAUSSIAN:
            /* HF PEFT init_lora_weights="gaussian": A ~ N(0, std = 1/r), B = 0 */
            for (int64_t k = 0; k < na; k++) md->A[k] = peft_rng_normal(rng) / (float)md->r;
            break;
        case LORA_INIT_ZERO_B_RANDOM_BOTH:
            /* HF PEFT init_lora_weights=False: both keep nn.Linear's default
             * kaiming-uniform, so the adapter is not a no-op at step 0. */
            adapter_kaiming_uniform(md->A, na, md->in, rng);
            adapter_kaiming_uniform(md->B, nb, md->r, rng);
            break;
        case LORA_INIT_KAIMING:
        default:
            adapter_kaiming_uniform(md->A, na, md->in, rng);
            break;
        }
    }
    if (st->cfg.dora) {
        /* DoRA: the magnitude starts at ||W + s·B·A|| row by row, so the
         * adapter is the identity at initialisation */
        int rc = adapter_refresh(a, m, err);
        if (rc) return rc;
        for (int i = 0; i < st->n_modules; i++)
            memcpy(st->mods[i].mag, st->mods[i].wnorm, (size_t)st->mods[i].out * sizeof(float));
    }
    return 0;
}

int lora_new(const peft_model *m, const lora_config *cfg, adapter **out, peft_err *err) {
    return lora_new_head(m, cfg, 0, out, err);
}

int lora_new_head(const peft_model *m, const lora_config *cfg, int n_labels, adapter **out, peft_err *err) {
    *out = NULL;
    method_config mc;
    memset(&mc, 0, sizeof mc);
    mc.ops = cfg->dora ? &method_dora : &method_lora;
    mc.r = cfg->r;
    mc.alpha = cfg->alpha;
    mc.dropout = cfg->dropout;
    mc.targets = cfg->targets;
    mc.layers = cfg->layers;
    mc.seed = cfg->seed;
    mc.n_labels = n_labels;
    /* r 0 would be the method's default: lora_plan rejects it as before */
    if (cfg->r <= 0) return peft_fail(err, PEFT_ERR_INVALID, "LoRA: rank r must be in 1..65536, got %d", cfg->r);
    static const char *const inits[] = {"kaiming", "gaussian", "false"};
    int rc = 0;
    if ((cfg->rslora && (rc = method_option_add(&mc, "rslora", "true", err))) ||
        (rc = method_option_add(&mc, "init", inits[cfg->init <= LORA_INIT_ZERO_B_RANDOM_BOTH ? cfg->init : 0], err)))
        return rc;
    return adapter_new(m, &mc, out, err);
}

lora_module *lora_find(const adapter *a, int layer, model_linear_role role) {
    const lora_state *st = lora_of(a);
    if (!st || !st->slot || layer < 0 || layer >= a->n_layer || (int)role < 0 || role >= ROLE_N_LINEAR)
        return NULL;
    return st->slot[layer * ROLE_N_LINEAR + role];
}

/* ---- GGUF naming and llama.cpp's Q/K row order -------------------------------- */

int lora_gguf_weight_name(const peft_model *m, int layer, model_linear_role r, char *buf, size_t cap) {
    if ((int)r < 0 || r >= ROLE_N_LINEAR || !m->cfg.desc->gguf_lin[r]) return PEFT_ERR_INVALID;
    snprintf(buf, cap, "blk.%d.%s.weight", layer, m->cfg.desc->gguf_lin[r]);
    return 0;
}

