/* chat.c — chat prompts in the three template families we know (ChatML,
 * Llama 2 [INST], Llama 3 headers), chosen from the model's Jinja template
 * text when there is one and from the vocabulary otherwise. We do not run
 * Jinja: we recognise the family and, for ChatML, read the default system
 * prompt the template writes when the conversation has none. */
#include "tokenizer/bpe_internal.h"

#include <stdlib.h>
#include <string.h>

typedef enum { CHAT_CHATML, CHAT_LLAMA2, CHAT_LLAMA3 } chat_style;

static bool has_tok(const bpe_tokenizer *t, const char *s) { return bpe_lookup(t, s, strlen(s)) >= 0; }

static chat_style pick_style(const bpe_tokenizer *t) {
    const char *tpl = t->chat_template;
    if (tpl) {
        if (strstr(tpl, "<|im_start|>")) return CHAT_CHATML;
        if (strstr(tpl, "<|start_header_id|>")) return CHAT_LLAMA3;
        if (strstr(tpl, "[INST]")) return CHAT_LLAMA2;
    }
    if (has_tok(t, "<|im_start|>")) return CHAT_CHATML;
    if (has_tok(t, "<|start_header_id|>")) return CHAT_LLAMA3;
    if (t->kind == BPE_SENTENCEPIECE) return CHAT_LLAMA2;
    return CHAT_CHATML;
}

/* The default system prompt of a ChatML template: the text of a string
 * literal "<|im_start|>system\n...<|im_end|>" (the newline either real or
 * written as \n inside the Jinja string). Jinja escapes \n \t \' \" \\ are
 * undone. NULL when there is none. */
static char *chatml_default_system(const char *tpl, peft_err *err) {
    static const char key[] = "<|im_start|>system";
    /* Each candidate scans up to its <|im_end|>; a template with thousands of
     * candidates before one <|im_end|> would make that quadratic, and real
     * templates have a handful, so only the first few are tried. */
    int tries = 0;
    for (const char *p = tpl ? strstr(tpl, key) : NULL; p && tries < 16; p = strstr(p + 1, key), tries++) {
        const char *q = p + sizeof key - 1;
        if (*q == '\n') q++;
        else if (q[0] == '\\' && q[1] == 'n') q += 2;
        else continue; /* e.g. "<|im_start|>system" + message... */
        const char *end = strstr(q, "<|im_end|>");
        if (!end) return NULL;
        /* Must be literal text, not template code. */
        bool code = false;
        for (const char *c = q; c < end; c++)
            if ((c[0] == '{' && (c[1] == '{' || c[1] == '%')) || (c[0] == '\'' && c > q && c[-1] != '\\')) code = true;
        if (code) continue;
        char *s = peft_malloc((size_t)(end - q) + 1, err);
        if (!s) return NULL;
        size_t n = 0;
        for (const char *c = q; c < end; c++) {
            if (c[0] == '\\' && c + 1 < end) {
                char e = c[1];
                s[n++] = e == 'n' ? '\n' : e == 't' ? '\t' : e;
                c++;
            } else {
                s[n++] = *c;
            }
        }
        s[n] = 0;
        return s;
    }
    return NULL;
}

/* Leading and trailing whitespace removed (Jinja's |trim, as Llama's templates do). */
static int append_trimmed(peft_buf *b, const char *s) {
    size_t n = strlen(s), a = 0;
    while (a < n && (s[a] == ' ' || s[a] == '\n' || s[a] == '\t' || s[a] == '\r')) a++;
    while (n > a && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\t' || s[n - 1] == '\r')) n--;
    return peft_buf_append(b, s + a, n - a);
}

static const char *tok_or(const bpe_tokenizer *t, int id, const char *dflt) {
    return id >= 0 && id < t->n_vocab && t->tok[id] ? t->tok[id] : dflt;
}

static const char *gen_prompt(chat_style st) {
    return st == CHAT_CHATML ? "<|im_start|>assistant\n"
           : st == CHAT_LLAMA3 ? "<|start_header_id|>assistant<|end_header_id|>\n\n"
                               : "";
}

const char *bpe_chat_gen_prompt(const bpe_tokenizer *t) { return gen_prompt(pick_style(t)); }

/* ends (NULL or n + 1 entries): the text's length before message 0 and
 * after each message. */
static int chat_format(const bpe_tokenizer *t, const bpe_chat_msg *msgs, int n, bool add_generation_prompt,
                       char **out, size_t *ends, peft_err *err) {
    *out = NULL;
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content)
            return peft_fail(err, PEFT_ERR_INVALID, "chat message %d has no role or content", i);
    peft_buf b = {0};
    int rc = 0;
    chat_style st = pick_style(t);
    bool has_system = n > 0 && !strcmp(msgs[0].role, "system");

    if (st == CHAT_CHATML) {
        /* <|im_start|>role\ncontent<|im_end|>\n ... [<|im_start|>assistant\n] */
        if (!has_system) {
            char *def = chatml_default_system(t->chat_template, err);
            if (def) {
                rc = peft_buf_printf(&b, "<|im_start|>system\n%s<|im_end|>\n", def);
                free(def);
            }
        }
        if (ends) ends[0] = b.len;
        for (int i = 0; i < n && !rc; i++) {
            rc = peft_buf_printf(&b, "<|im_start|>%s\n%s<|im_end|>\n", msgs[i].role, msgs[i].content);
            if (ends) ends[i + 1] = b.len;
        }
        if (!rc && add_generation_prompt) rc = peft_buf_append(&b, gen_prompt(st), strlen(gen_prompt(st)));
    } else if (st == CHAT_LLAMA3) {
        /* <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> */
        rc = peft_buf_append(&b, tok_or(t, t->bos_id, "<|begin_of_text|>"), strlen(tok_or(t, t->bos_id, "<|begin_of_text|>")));
        if (ends) ends[0] = b.len;
        for (int i = 0; i < n && !rc; i++) {
            rc = peft_buf_printf(&b, "<|start_header_id|>%s<|end_header_id|>\n\n", msgs[i].role);
            if (!rc) rc = append_trimmed(&b, msgs[i].content);
            if (!rc) rc = peft_buf_append(&b, "<|eot_id|>", 10);
            if (ends) ends[i + 1] = b.len;
        }
        if (!rc && add_generation_prompt) rc = peft_buf_append(&b, gen_prompt(st), strlen(gen_prompt(st)));
    } else {
        /* <s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nuser [/INST] answer </s><s>[INST] ... [/INST]
         * The generation prompt is implicit (the text ends with [/INST]). */
        const char *bos = tok_or(t, t->bos_id, "<s>"), *eos = tok_or(t, t->eos_id, "</s>");
        const char *sys = has_system ? msgs[0].content : NULL;
        if (ends) ends[0] = 0;
        if (ends && has_system) ends[1] = 0;   /* the system text goes into the first user turn */
        for (int i = has_system ? 1 : 0; i < n && !rc; i++) {
            if (!strcmp(msgs[i].role, "assistant")) {
                rc = peft_buf_append(&b, " ", 1);
                if (!rc) rc = append_trimmed(&b, msgs[i].content);
                if (!rc) rc = peft_buf_printf(&b, " %s", eos);
                if (ends) ends[i + 1] = b.len;
                continue;
            }
            rc = peft_buf_printf(&b, "%s[INST] ", bos);
            if (!rc && sys) {
                rc = peft_buf_append(&b, "<<SYS>>\n", 8);
                if (!rc) rc = append_trimmed(&b, sys);
                if (!rc) rc = peft_buf_append(&b, "\n<</SYS>>\n\n", 11);
                sys = NULL;
            }
            if (!rc) rc = append_trimmed(&b, msgs[i].content);
            if (!rc) rc = peft_buf_append(&b, " [/INST]", 8);
            if (ends) ends[i + 1] = b.len;
        }
    }
    if (!rc) rc = peft_buf_append(&b, "", 0);
    if (rc) {
        peft_buf_free(&b);
        return peft_fail(err, rc == PEFT_ERR_NOMEM ? rc : rc, "%s: chat format failed (%s)", t->source,
                         peft_status_name(rc));
    }
    *out = b.data;
    return 0;
}

int bpe_chat_format(const bpe_tokenizer *t, const bpe_chat_msg *msgs, int n,
                    bool add_generation_prompt, char **out, peft_err *err) {
    return chat_format(t, msgs, n, add_generation_prompt, out, NULL, err);
}

int bpe_chat_format_ends(const bpe_tokenizer *t, const bpe_chat_msg *msgs, int n, char **out, size_t *ends,
                         peft_err *err) {
    return chat_format(t, msgs, n, false, out, ends, err);
}

int bpe_stop_tokens(const bpe_tokenizer *t, int32_t *ids, int cap) {
    static const char *const names[] = {"<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",
                                        "<|endoftext|>", "<|end|>", "<end_of_turn>", "</s>", NULL};
    int n = 0;
    for (int i = 0; names[i]; i++) {
        int id = bpe_lookup(t, names[i], strlen(names[i]));
        if (id < 0 || id == t->eos_id) continue;
        /* Only tokens the tokenizer treats as special end turns. */
        if (!(t->attr[id] & BPE_ATTR_SPECIAL)) continue;
        if (n < cap) ids[n] = id;
        n++;
    }
    return PEFT_MIN(n, cap);
}
