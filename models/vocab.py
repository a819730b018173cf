"""Build a Stable-Diffusion-style `CLIPTokenizer` for a closed vocabulary, offline.

Real CLIP vocabularies cannot be downloaded here, so tests and the bundled tiny model make their
own: the 256 byte-level symbols (with and without the end-of-word marker ``</w>``), then BPE merges
that assemble each given word from its characters. Any text still tokenizes (unknown words fall
back to characters), and every listed word is exactly one token.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@lru_cache(maxsize=1)
def _byte_symbols() -> tuple[str, ...]:
    """GPT-2/CLIP's printable stand-ins for the 256 bytes, in CLIP's vocabulary order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return tuple(chr(c) for c in cs)


def _merges_for(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that turn the characters of `word` into the single token ``word</w>``."""
    chars = [*word[:-1], word[-1] + "</w>"]
    merges, left = [], chars[0]
    for right in chars[1:]:
        merges.append((left, right))
        left = left + right
    return merges


def build_clip_tokenizer(
    words: list[str],
    max_length: int = 77,
    pad_token: str = EOS,
    save_dir: str | Path | None = None,
) -> CLIPTokenizer:
    """A `CLIPTokenizer` whose vocabulary holds the byte symbols plus `words` as single tokens.

    `pad_token` is EOS as in SD1.x; pass ``"!"`` (id 0) to pad as SD2.x does.
    """
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for token in [*symbols, *(s + "</w>" for s in symbols)]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    # Longer words' merges rank first, so a short word ("an") cannot split a longer one ("van").
    vocabulary = sorted({w.lower() for w in words if w.strip()}, key=lambda w: (-len(w), w))
    for word in vocabulary:
        if " " in word:
            raise ValueError(f"vocabulary entries are single words; split {word!r} into its words")
        for left, right in _merges_for(word):
            if (left, right) not in seen:
                seen.add((left, right))
                merges.append((left, right))
                vocab.setdefault(left + right, len(vocab))
    vocab.setdefault(BOS, len(vocab))
    vocab.setdefault(EOS, len(vocab))
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=pad_token,
        model_max_length=max_length,
    )
    split = [w for w in vocabulary if len(tokenizer.tokenize(w)) != 1]
    if split:
        raise ValueError(f"these words would not be single tokens: {split}; rename or drop them")
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer
