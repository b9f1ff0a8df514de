"""Word tokenizer and tiny text encoder: the pinned v1 vocabulary and the bump path,
vocabulary coverage, (ids, mask) contract, padding invariance, logical-axis params,
trainability."""
import hashlib

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import optax
import pytest
from flax import linen as nn

from seaweed_jax.models import text
from seaweed_jax.models.text import tokenizer as tk
from seaweed_jax.models.text import vocabulary
from seaweed_jax.moving_shapes import builder as ms
from seaweed_jax.moving_shapes import labels as msl
from seaweed_jax.parallel import make_mesh, rules, sharding


def test_vocabulary_covers_moving_shapes_captions():
    tok = text.WordTokenizer()
    vocab = set(tok.vocabulary)
    for w in [*msl.COLORS, *msl.BACKGROUNDS, *msl.SHAPES, *msl.DIRECTIONS]:
        assert w in vocab
    assert tok.vocabulary[:3] == ("<pad>", "<unk>", "<eos>") and tok.vocab_size > 300
    assert len(set(tok.vocabulary)) == tok.vocab_size
    longest = 0
    for i in range(300):   # canonical and paraphrased captions, still and moving
        caption = ms.render_example(0, i, 16, 16, 5)[1]["caption"]
        assert tok.unknown_words(caption) == [], caption
        longest = max(longest, len(tok.encode(caption)))
    # every caption (words + <eos>) fits the default max_len
    assert longest <= text.text_config().max_len
    # ids are a pure function of the code: two tokenizers agree
    assert text.WordTokenizer().vocabulary == tok.vocabulary


# The shipped vocabulary, pinned: trained text embeddings are rows indexed by these ids.
V1_SIZE = 358
V1_SHA256 = "c7d5ed14374c8a7c6140e0a35a0713ef344d0946f84adb6e3e7505a9412791a0"
V1_IDS = {
    "a red circle moving left on a black background": [22, 3, 14, 25, 17, 30, 22, 11, 33, 2, 0, 0],
    "a still green triangle on a navy background": [22, 21, 4, 16, 30, 22, 13, 33, 2, 0, 0, 0],
    "an orange square moves up across a gray background":
        [23, 10, 15, 26, 19, 31, 22, 12, 33, 2, 0, 0],
    "": [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
}


def _v1_ids(tok):
    return {c: tok.tokenize(c, 12)[0][0].tolist() for c in V1_IDS}


def test_v1_vocabulary_is_pinned():
    v1 = vocabulary.VOCABULARIES["seaweed_word_v1"]
    assert vocabulary.DEFAULT == "seaweed_word_v1"
    assert len(v1) == V1_SIZE
    assert hashlib.sha256("\n".join(v1).encode()).hexdigest() == V1_SHA256
    tok = text.WordTokenizer()
    assert tok.name == "seaweed_word_v1" and tok.vocabulary == v1 and tok.vocab_size == V1_SIZE
    assert _v1_ids(tok) == V1_IDS
    assert {c: text.tokenize(c, 12)[0][0].tolist() for c in V1_IDS} == V1_IDS
    assert text.build_text_encoder(text.text_config()).tokenizer.name == "seaweed_word_v1"


def test_v1_covers_every_moving_shapes_word():
    # Every label and every caption-template word has a real id, so each dataset caption does.
    tok = text.WordTokenizer("seaweed_word_v1")
    label_words = [*msl.COLOR_NAMES, *msl.BACKGROUND_NAMES, *msl.SHAPES, *msl.DIRECTIONS]
    placeholders = {f"{{{k}}}": "" for k in ("color", "shape", "direction", "background")}
    templates = [*msl.MOVING_PARAPHRASES, *msl.STILL_PARAPHRASES,
                 msl.canonical_caption("{color}", "{shape}", "left", "{background}"),
                 msl.canonical_caption("{color}", "{shape}", "still", "{background}")]
    template_words = []
    for t in templates:
        for k, v in placeholders.items():
            t = t.replace(k, v)
        template_words += tk.split_words(t)
    assert {"a", "moving", "moves", "standing", "stays", "across", "with", "background"} <= set(
        template_words)
    for w in [*label_words, *template_words]:
        assert tok.encode(w)[0] != tk.UNK_ID, w
    for caption in msl.canonical_prompts(64, seed=0) + msl.canonical_prompts(8, 1, video=False):
        assert tok.unknown_words(caption) == [], caption


def test_vocabulary_bump_path(monkeypatch):
    v1 = vocabulary.VOCABULARIES["seaweed_word_v1"]
    assert "zebra" not in v1
    monkeypatch.setitem(vocabulary.VOCABULARIES, "test_v2", (*v1, "zebra"))
    v2 = text.WordTokenizer("test_v2")
    assert v2.name == "test_v2" and v2.vocab_size == V1_SIZE + 1
    assert v2.encode("a zebra") == [22, V1_SIZE, tk.EOS_ID]
    # v1 is untouched: same words, same ids, and "zebra" is still unknown there.
    tok = text.WordTokenizer("seaweed_word_v1")
    assert tok.vocabulary == v1 and _v1_ids(tok) == V1_IDS and _v1_ids(v2) == V1_IDS
    assert tok.encode("a zebra") == [22, tk.UNK_ID, tk.EOS_ID]
    # A run records its tokenizer name; rebuilding from the record honours it.
    enc = text.build_text_encoder(text.text_config(tokenizer="test_v2", max_len=8, width=16))
    assert enc.tokenizer.name == "test_v2" and enc.module.vocab_size == V1_SIZE + 1
    assert enc.describe()["tokenizer"] == "test_v2"
    with pytest.raises(ValueError, match="seaweed_word_v1") as e:
        text.WordTokenizer("seaweed_word_v9")
    assert "test_v2" in str(e.value) and "seaweed_word_v9" in str(e.value)


def test_tokenize_contract():
    ids, mask = text.tokenize(["A Red circle, moving LEFT!", "", "zzz red"], max_len=8)
    assert ids.shape == mask.shape == (3, 8) and ids.dtype == np.int32 and mask.dtype == bool
    tok = text.WordTokenizer()
    np.testing.assert_array_equal(mask.sum(1), [6, 1, 3])
    assert tok.decode(ids[0]) == "a red circle moving left"
    assert ids[0, 5] == tk.EOS_ID and np.all(ids[0, 6:] == tk.PAD_ID)
    assert ids[1, 0] == tk.EOS_ID                       # empty prompt = [<eos>]
    assert ids[2, 0] == tk.UNK_ID and tok.decode(ids[2]) == "<unk> red"
    # truncation keeps the first max_len-1 words and the <eos>
    ids, mask = text.tokenize("a b c d e f g", max_len=4)
    assert mask.all() and ids[0, -1] == tk.EOS_ID
    with pytest.raises(ValueError):
        text.tokenize("a", max_len=0)


@pytest.fixture(scope="module")
def enc():
    # One small encoder for the module: compiling its init dominates these tests' time.
    return text.build_text_encoder(text.text_config(max_len=10, width=32, num_heads=4,
                                                    mlp_dim=64, num_layers=1))


@pytest.fixture(scope="module")
def params(enc):
    return enc.init(jax.random.key(0))


def test_encoder_outputs_and_padding_invariance(enc, params):
    prompts = ["a red circle moving left on a black background", "a blue square", ""]
    ids, mask = enc.tokenize(prompts)
    emb, m = jax.jit(enc.apply)(params, ids, mask)
    assert emb.shape == (3, 10, 32) and emb.dtype == jnp.float32
    np.testing.assert_array_equal(m, mask)
    assert float(jnp.abs(jnp.where(mask[..., None], 0.0, emb)).max()) == 0.0   # zero at padding
    assert bool(jnp.all(jnp.isfinite(emb)))
    # Garbage ids at padded positions change nothing (padding is masked as keys).
    noisy = np.where(mask, ids, 7)
    emb2, _ = jax.jit(enc.apply)(params, noisy, mask)
    np.testing.assert_allclose(emb2, emb, atol=1e-6)
    # Different prompts -> different embeddings; the bundle's encode == tokenize + apply.
    e_red, _ = enc.encode(params, ["a red circle"])
    e_blue, _ = enc.encode(params, ["a blue circle"])
    assert float(jnp.abs(e_red - e_blue).max()) > 1e-2
    null_emb, null_mask = enc.null_embedding(params)
    np.testing.assert_allclose(null_emb, emb[2:3], atol=1e-6)
    assert null_emb.shape == (1, 10, 32) and int(null_mask.sum()) == 1
    assert enc.describe() == dict(kind="tiny", tokenizer="seaweed_word_v1", max_len=10, width=32)
    with pytest.raises(ValueError, match="max_len"):
        enc.apply(params, ids[:, :5], mask[:, :5])


def test_params_are_logically_partitioned_and_shard(enc, params):
    abstract = jax.eval_shape(lambda k: enc.init(k, unbox=False), jax.random.key(0))
    leaves = jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    for box in leaves:
        assert len(box.names) == box.value.ndim
        assert all(n is None or n in rules.LOGICAL_AXES for n in box.names)
    mesh = make_mesh(mc.ConfigDict({"shape": {"data": 2, "fsdp": 2, "tensor": 2}}))
    shardings = sharding.logical_to_shardings(abstract, mesh, rules.DEFAULT_RULES)
    # (placing existing params avoids a second init compile; the specs are what matter)
    sharded = jax.device_put(params, nn.meta.unbox(shardings))
    assert sharded["token_embed"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert sharded["block_0"]["query"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    emb, _ = enc.encode(sharded, ["a red circle"])
    ref, _ = enc.encode(params, ["a red circle"])
    np.testing.assert_allclose(emb, ref, atol=1e-5)


def test_encoder_is_trainable(enc, params):
    # A linear probe on mean-pooled embeddings learns the colour word in a few Adam steps,
    # and gradients reach the encoder.
    colours = list(msl.COLORS)
    prompts = [f"a {c} {s} moving left" for c in colours for s in msl.SHAPES]
    labels = jnp.array([i for i in range(len(colours)) for _ in msl.SHAPES])
    ids, mask = enc.tokenize(prompts)
    params = {"enc": params,
              "probe": 0.1 * jax.random.normal(jax.random.key(2), (32, len(colours)))}

    def loss_fn(p):
        emb, m = enc.apply(p["enc"], ids, mask)
        pooled = emb.sum(1) / m.sum(1, keepdims=True)
        logits = pooled @ p["probe"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

    opt = optax.adam(3e-2)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        (loss, logits), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss, g

    p = params
    _, _, loss0, g0 = step(p, state)
    assert float(jnp.abs(g0["enc"]["block_0"]["query"]).max()) > 0
    for _ in range(40):
        p, state, loss, _ = step(p, state)
    acc = float(jnp.mean(jnp.argmax(loss_fn(p)[1], -1) == labels))
    assert float(loss) < 0.2 * float(loss0) and acc == 1.0


def test_unknown_kinds():
    with pytest.raises(NotImplementedError, match="planned"):
        text.build_text_encoder({"kind": "t5", "path": "/nowhere"})
    with pytest.raises(ValueError, match="kind"):
        text.build_text_encoder({"kind": "bert"})


def test_runs_recorded_before_the_tokenizer_field_keep_v1():
    """A DiT run whose recorded text_encoder has no `tokenizer` (written before the field
    existed) is rebuilt with the vocabulary it was trained with, whatever DEFAULT becomes."""
    from seaweed_jax.trainer.dit_task import text_encoder_config
    old = mc.ConfigDict({"model": {"text_dim": 16},
                         "text_encoder": {"kind": "tiny", "max_len": 8, "width": 16}})
    assert text_encoder_config(old).tokenizer == "seaweed_word_v1"
    new = mc.ConfigDict({"model": {"text_dim": 16},
                         "text_encoder": {"kind": "tiny", "width": 16, "tokenizer": "x_v2"}})
    assert text_encoder_config(new).tokenizer == "x_v2"
