/* registry.c — every method (method.h). Adding a method is its file in
 * this folder and one line here. The order is --help's, and of two methods
 * with one peft_type the first loads its files (lora before dora). */
#include "peft/method.h"

extern const method_ops method_lora, method_dora, method_adapter_pfeiffer, method_adapter_houlsby, method_prompt, method_prefix, method_ia3,
    method_vera, method_bitfit, method_full, method_loha, method_lokr, method_adalora;

static const method_ops *const registry[] = {
    &method_lora,
    &method_dora,
    &method_adapter_pfeiffer,
    &method_adapter_houlsby,
    &method_prompt,
    &method_prefix,
    &method_ia3,
    &method_vera,
    &method_bitfit,
    &method_full,
    &method_loha,
    &method_lokr,
    &method_adalora,
    NULL,
};

const method_ops *const *method_registry(void) { return registry; }
