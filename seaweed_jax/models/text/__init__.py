"""Text encoders: texts -> (embeddings (B, L, D), mask (B, L) bool) at a fixed max length."""
from seaweed_jax.models.text.encoder import (TextEncoder, TextEncoderBundle, build_text_encoder,
                                             text_config)
from seaweed_jax.models.text.tokenizer import WordTokenizer, tokenize

__all__ = ["TextEncoder", "TextEncoderBundle", "build_text_encoder", "text_config",
           "WordTokenizer", "tokenize"]
