"""A small tokenizer for the project's agent LMs, trained offline on an environment's own text.

WordPiece over a whitespace-and-punctuation pre-tokenizer: every frequent word of the
environment (objects, receptacles, verbs, numbers) is one token, rare or unseen words fall back
to sub-word pieces (the alphabet is always included), so no text is ever unknown. Because
pre-tokenisation splits at every space and punctuation mark, tokenising a prompt and an action
separately gives the same ids as tokenising their concatenation; this is what the backends'
scoring contract (candidate tokenised on its own, appended to the prompt) needs.

Saved as a ``PreTrainedTokenizerFast`` (``tokenizer.json`` + config) so ``AutoTokenizer`` loads
it from the checkpoint directory like any other.
"""
from __future__ import annotations

import string
from typing import Iterable

SPECIAL = {"pad": "[PAD]", "unk": "[UNK]", "eos": "[EOS]"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2):
    """A ``PreTrainedTokenizerFast`` trained on ``texts`` (lower-cased; ``vocab_size`` at most)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token=SPECIAL["unk"], max_input_chars_per_word=64))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    alphabet = list(string.ascii_lowercase + string.digits + string.punctuation)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(SPECIAL.values()), initial_alphabet=alphabet,
                                        continuing_subword_prefix="##", show_progress=False)
    # every character also as a word-continuation piece ("##c"), so any word can be spelled out
    spelled = " ".join("a" + c for c in alphabet if c not in string.punctuation)
    tok.train_from_iterator(list(texts) + [spelled], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=SPECIAL["pad"], unk_token=SPECIAL["unk"],
                                   eos_token=SPECIAL["eos"], model_max_length=4096)
