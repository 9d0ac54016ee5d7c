/* param_groups.h — the optimizer's parameter groups of an adapter: its
 * registry's PG_* bits (adapter.h) and the training options become
 * contiguous segments of the parameter vector, each with the lr and weight
 * decay torch would give its group. Two rules, both HF's:
 *   plain AdamW (HF Trainer.create_optimizer): weight decay on every tensor
 *     but those of get_decay_parameter_names' exclusions (PG_NO_DECAY:
 *     biases, norm weights), one lr;
 *   LoRA+ (loraplus_lr_ratio > 0, peft.optimizers.create_loraplus_optimizer):
 *     group A (the rest) lr, decay; group B (PG_LORA_B) lr × ratio, decay,
 *     or no decay where PG_NO_DECAY; embedding (PG_EMBEDDING)
 *     loraplus_lr_embedding, decay. The decay is weight_decay (HF's
 *     loraplus_weight_decay). */
#ifndef PEFT_TRAIN_PARAM_GROUPS_H
#define PEFT_TRAIN_PARAM_GROUPS_H

#include "peft/adapter.h"
#include "train/optim.h"

/* *out (malloc'd, *n_out entries) covers a's whole parameter vector;
 * neighbouring tensors of the same lr and decay share a segment. LoRA+ on
 * an adapter without a B group (not a LoRA-family method) is an error. */
int param_groups_build(const adapter *a, const optim_params *p, optim_segment **out, int *n_out, peft_err *err);

#endif
