/* registry.c — every architecture this build knows: one line each. */
#include "model/arch.h"

#include <stdio.h>
#include <string.h>

extern const arch_desc arch_llama, arch_mistral, arch_qwen2, arch_qwen3, arch_gpt2;

static const arch_desc *const registry[] = {
    &arch_llama,
    &arch_mistral,
    &arch_qwen2,
    &arch_qwen3,
    &arch_gpt2,
    NULL,
};

const arch_desc *const *arch_registry(void) { return registry; }

const arch_desc *arch_find(const char *name) {
    for (const arch_desc *const *d = registry; name && *d; d++)
        if (!strcmp((*d)->name, name)) return *d;
    return NULL;
}

const char *arch_known_names(char *buf, size_t cap) {
    size_t o = 0;
    if (cap) buf[0] = 0;
    for (const arch_desc *const *d = registry; *d && o < cap; d++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", d == registry ? "" : ", ", (*d)->name);
    return buf;
}

const char *const arch_gguf_lin[ROLE_N_LINEAR] = {
    "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
