#!/usr/bin/env python3
"""Writes deterministic, deliberately awkward test strings in the shared
vectors' .inp format (for the differential check against llama.cpp):
whitespace of every kind, contractions in all cases, digits of several
scripts, combining marks, CJK, emoji sequences, code, and random mixes.

    gen_texts.py OUT.inp [N_RANDOM] [--special N_SPECIAL]

--special adds strings that mix special-token texts of the three shared
vocabularies with plain words, for checks with special-token parsing.
"""
import random
import sys

SEP = "\n__ggml_vocab_test__\n"
FIXED = [
    "Hello world", " Hello", "  Hello", "\tHello\n", "\r\n\r\n", "a\u00a0b", "a\u0085b", "x\u2028y\u2029z",
    "\u3000full width\u3000space", "I'M HERE, YOU'RE THERE, WE'VE GONE, HE'LL COME, SHE'D GO, IT'S",
    "don't 'twas 'Tis rock'n'roll ''quoted'' 's", "١٢٣٤ ٥٦ 12345 ¹²³ ⅫⅣ ½", "e\u0301te\u0301 Cafe\u0301",
    "中文分词测试，标点符号。", "日本語のテキスト、カタカナ", "한국어 텍스트", "Привет, мир!", "مرحبا بالعالم",
    "हिन्दी पाठ", "👨‍👩‍👧‍👦 family 🏳️‍🌈 flag 👍🏽", "int main(void) {\n\treturn 0;\n}\n",
    "    indented\n        more\n", "a  b   c    d", "end with spaces   ", "\n\n\nnewlines\n\n",
    "<|im_start|>user\nhi<|im_end|>", "<s>[INST] hi [/INST]</s>", "<|endoftext|><|endoftext|>",
    "1234567890123", "3.14159 2.71828 1e-10 0x1F", "$100 €200 £300 ¥400", "a-b_c.d/e\\f|g~h^i",
    "!!!???...,,,;;;:::", "   \t  \t", "ǅ ǈ ǋ Ǆ", "ﬁ ﬂ ﬃ", "\u200b\u200c\u200d\ufeff", "\ue000\uf8ff",
    "𝐀𝐁𝐂 𝟎𝟏𝟐", "ßẞ İı", "word\u00adbreak", "tab\there", "mixed\r\nline\rendings\n",
]
ALPHABET = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
            + list(" \t\n\r.,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`") + ["'s", "'T", "'ll", "'Re"]
            + list("éüñçßøåæ中文日本語한국어абвгдеαβγδ١٢٣") + ["\u00a0", "\u3000", "\u2028", "\u0085",
              "\u0301", "\u200d", "😀", "🦙", "👍🏽", "²", "Ⅻ", "\ufffd", "  ", "\n\n", "   "])

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<unk>", "<|begin_of_text|>",
            "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_3|>"]
WORDS = ["hello", " world", "\n", " ", "  ", "user", "assistant", "Hi", "<", "|", "im_start", ">", "s>", "</"]

def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    n_special = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--special" else 0
    rng = random.Random(20261122)
    texts = list(FIXED) if n > 0 else []
    for _ in range(n):
        k = rng.randint(1, 40)
        texts.append("".join(rng.choice(ALPHABET) for _ in range(k)))
    # long texts: many repeated words (exercises the per-call word cache)
    for _ in range(min(n, 8)):
        texts.append(" ".join(rng.choice(texts[:len(FIXED)] + ["the", "of", "and", ","]) for _ in range(300)))
    for _ in range(n_special):
        texts.append("".join(rng.choice(SPECIALS + WORDS) for _ in range(rng.randint(1, 12))))
    with open(out, "w", encoding="utf-8", newline="") as f:
        for t in texts:
            f.write(t + SEP)

main()
