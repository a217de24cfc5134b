"""Build a tiny random-weight Llama with its own tokenizer, without any download.

Run by a Python that has torch, transformers and tokenizers (the vLLM
environment)::

    <vllm-python> tiny_model.py OUTDIR

It writes a Hugging Face model directory that vLLM serves on a CPU: a
byte-level BPE tokenizer (vocabulary 1024) trained on generated text, with
a small chat template, and a ``LlamaForCausalLM`` of 2 layers, hidden size
128, 4 attention heads and 2 KV heads (head size 32, the least vLLM's CPU
attention takes). The weights are random from a fixed seed: the model talks
nonsense, at real speed, which is all a serving test needs.

This file must stay a standalone script: it imports nothing from
pytest_llmperf, since the Python that runs it does not have the package.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

SEED = 1234
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_WORD_TEXT = (
    "the of and to in is was for on that with as by at from it this be are or an have not which but "
    "his they one all their has been were more would there what about when out can up into time some "
    "other them only new these may could first two then over after most also where made did many "
    "before must through back years much your way well down should because each just those people "
    "how too little state good very make world still own see men work long here get both between "
    "life being under never day same another know while last might great old year off come since "
    "against go came right used take three small large number water light sound model server token "
    "test latency stream request batch memory cache queue measure budget engine prompt output input "
    "fast slow first last every quiet river stone cloud garden window market letter mountain morning "
    "evening summer winter yellow purple silver golden orange honest simple gentle careful curious"
)
WORDS = _WORD_TEXT.split()


def corpus(lines: int = 6000) -> list[str]:
    """Sentences of common words with digits and punctuation, from a fixed seed."""
    rng = random.Random(SEED)
    out = []
    for i in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 16))]
        if i % 7 == 0:
            words.append(str(rng.randint(0, 9999)))
        sentence = " ".join(words)
        out.append(sentence[0].upper() + sentence[1:] + rng.choice([".", ".", "!", "?", ","]))
    return out


def build(outdir: Path) -> None:
    # Only the vLLM environment has these; the plugin's own mypy run does not.
    import torch  # type: ignore[import-not-found, unused-ignore]
    from tokenizers import (  # type: ignore[import-not-found, unused-ignore]
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import (  # type: ignore[import-not-found, unused-ignore]
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    vocab = len(tokenizer)

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    # Greedy decoding of random weights locks onto whatever token scores
    # highest; a zero row scores 0 and loses to the best random logit, so
    # special tokens and lone non-ASCII bytes (which decode to no text) are
    # never chosen, and every streamed chunk carries visible text.
    banned = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    for token, token_id in tokenizer.get_vocab().items():
        if len(token) == 1 and token in byte_chars and _byte_of(token) not in range(32, 127):
            banned.append(token_id)
    with torch.no_grad():
        model.lm_head.weight[banned] = 0
    outdir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(outdir, safe_serialization=True)
    tokenizer.save_pretrained(outdir)


def _byte_of(char: str) -> int:
    """The byte a ByteLevel alphabet character stands for (GPT-2's mapping)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: b for b in printable}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = 256 + n
            n += 1
    reverse = {chr(c): b for b, c in mapping.items()}
    return reverse[char]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUTDIR", file=sys.stderr)
        return 2
    build(Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
