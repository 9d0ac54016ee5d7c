/* registry.c — every plug-in method (method.h). Adding a method is its
 * file in this folder and one line here. */
#include "peft/method.h"

extern const method_ops method_vera, method_ia3;

static const method_ops *const registry[] = {
    &method_ia3,
    &method_vera,
    NULL,
};

const method_ops *const *method_registry(void) { return registry; }
