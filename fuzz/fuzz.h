/* fuzz.h — shared pieces of the fuzz harnesses (fuzz/fuzz_*.c).
 *
 * Each harness file defines int fuzz_<name>_one(const uint8_t *, size_t):
 * it writes the input to files in a private temporary folder, runs one
 * library entry point over them and returns 1 when the input was accepted
 * (loaded), 0 when it was rejected with an error, or -1 when the library
 * broke a promise the harness can check (a failure without a message). The same
 * function is called by libFuzzer (fuzz build: FUZZ_MAIN defines
 * LLVMFuzzerTestOneInput) and by tests/test_fuzz_corpus.c, which replays
 * fuzz/corpus and fuzz/regressions in the normal and ASan test suites.
 *
 * Multi-file inputs (hf, adapter, safetensors sharded, tokenizer) are a
 * sequence of parts, each a header line then the file's bytes:
 *     %%peft-file NAME\n<bytes>\n%%peft-file NAME2\n<bytes>...
 * The newline before each following header is not part of the file. NAME is
 * [A-Za-z0-9._-], 1..64 characters, not starting with '.'; a part with
 * another name is ignored, a repeated name replaces the earlier part. An
 * input that does not start with "%%peft-file " is one file with the
 * harness's default name. */
#ifndef PEFT_FUZZ_H
#define PEFT_FUZZ_H

#include "peft.h"
#include "core/core.h"
#include <stddef.h>
#include <stdint.h>

#define FUZZ_PART_MARK "%%peft-file "

int fuzz_gguf_one(const uint8_t *data, size_t size);
int fuzz_model_gguf_one(const uint8_t *data, size_t size);
int fuzz_safetensors_one(const uint8_t *data, size_t size);
int fuzz_hf_one(const uint8_t *data, size_t size);
int fuzz_tokenizer_one(const uint8_t *data, size_t size);
int fuzz_adapter_one(const uint8_t *data, size_t size);
int fuzz_jsonl_one(const uint8_t *data, size_t size);
int fuzz_embed_one(const uint8_t *data, size_t size);

/* A fresh, empty folder of this process (the same path on every call; the
 * previous input's files are removed). NULL when it cannot be made. */
const char *fuzz_dir(void);
/* That folder's path, without clearing it. */
const char *fuzz_dir_path(void);
/* dir/name, in a static buffer. */
const char *fuzz_path(const char *name);
/* Writes one file into fuzz_dir(); 0 or -1. */
int fuzz_write(const char *name, const void *data, size_t n);
/* Splits a multi-file input into fuzz_dir() (see above); single is the name
 * of an input without a header. Returns the number of files written. */
int fuzz_write_parts(const uint8_t *data, size_t size, const char *single);
/* Whether fuzz_dir() holds a file of that name. */
int fuzz_has(const char *name);
/* A quiet context with one thread, made once. */
peft_ctx *fuzz_ctx(void);
/* A fixture path under the source tree (tests/fixtures/...). */
const char *fuzz_fixture(const char *rel);
/* info, tensor infos, tokenize, pieces, logits, a short greedy and a chat
 * generation on a loaded model; -1 on a failure without a message. */
int fuzz_exercise_model(peft_model *m);
/* Prints what a harness saw when PEFT_FUZZ_VERBOSE is set. */
void fuzz_note(const char *what, const char *msg);
/* -1 when an internal function's failure left no message in e, else 0. */
int fuzz_err_msg(const peft_err *e);
/* -1 when rc is a failure and ctx has no message. */
int fuzz_check_error(int rc, const peft_ctx *ctx);

#ifdef PEFT_FUZZ_MAIN
#include <stdlib.h>
#define FUZZ_MAIN(fn)                                                   \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);       \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {      \
        if (fn(data, size) < 0) abort();                               \
        return 0;                                                       \
    }
#else
#define FUZZ_MAIN(fn)
#endif

#endif
