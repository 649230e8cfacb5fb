"""Makes the tiny Llama that the real vLLM serves in tests: random weights, a byte-level BPE
tokenizer trained here, and a chat template. No download: nothing can be fetched from a hub.

Run with the vLLM environment's Python (it needs torch, transformers and tokenizers, which
Hedge's own environment does not have): ``python tiny_model.py OUT_DIR``. Deterministic: the
same versions give the same files. Imports nothing from Hedge, so it runs as a plain script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The CPU attention backend accepts head sizes 32, 64, 80, 96, 112, 128, ... (not 16), so
# hidden 128 with 4 heads is the smallest sensible shape.
HIDDEN_SIZE = 128
NUM_LAYERS = 2
NUM_HEADS = 4
INTERMEDIATE_SIZE = 256
VOCAB_SIZE = 1024
MAX_POSITIONS = 2048
SEED = 0

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, IM_END]

# ChatML, the template of many open models; the generation prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Training text for the tokenizer: any text works (byte-level BPE covers every input); this
# gives it common English merges so prompts are a realistic number of tokens.
_CORPUS = """
The quick brown fox jumps over the lazy dog. Hedge serves open models on Kubernetes with
vLLM engines behind an OpenAI-compatible gateway that falls back to external providers.
Hello, how are you today? I am fine, thank you. What is the capital of France? Paris.
Write a short poem about the sea. The waves are blue and the wind is cold tonight.
Count from one to ten: one two three four five six seven eight nine ten.
Platform teams run models in production, watch their latency and scale their replicas.
"""


def make_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=MAX_POSITIONS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


def make_model(out: Path, vocab_size: int, bos_id: int, eos_ids: list[int], pad_id: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=bos_id,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    generation = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_ids, pad_token_id=pad_id)
    generation.save_pretrained(out)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: tiny_model.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    make_tokenizer(out)
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    make_model(
        out,
        vocab_size=max(vocab.values()) + 1,
        bos_id=vocab[BOS],
        eos_ids=[vocab[EOS], vocab[IM_END]],
        pad_id=vocab[PAD],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
