import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from panglot.codecs.text import (
    DEFAULT_SPECIALS,
    WORLD_VOCAB_SIZE,
    SpecialTokens,
    TextTokenizer,
    UnknownSpecialToken,
    check_words,
    train_world_tokenizer,
    unknown_words,
    words_of,
)
from panglot.codecs.text.tokenizer import CODEC_FILE, TOKENIZER_FILE, WORDS_FILE


def test_special_ids_are_registry_positions(world_tokenizer):
    assert world_tokenizer.special_ids == {n: i for i, n in enumerate(DEFAULT_SPECIALS)}
    assert world_tokenizer.token_to_id("<boi>") == DEFAULT_SPECIALS.index("<boi>")
    with pytest.raises(UnknownSpecialToken, match="<image>"):
        world_tokenizer.token_to_id("<image>")


def test_world_text_round_trips_exactly(world_tokenizer, world_texts):
    batch = world_tokenizer.encode_batch(world_texts)
    assert batch == [world_tokenizer.encode(t) for t in world_texts]
    assert [world_tokenizer.decode(ids) for ids in batch] == world_texts


@pytest.mark.parametrize(
    "text", [" a red circle", "a  red\tcircle \n", "move the cyan cross to the top?!", "ünïcode ✓ 漢字"]
)
def test_odd_spacing_and_unseen_bytes_round_trip(world_tokenizer, text):
    assert world_tokenizer.decode(world_tokenizer.encode(text)) == text


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1).filter(str.strip))
def test_any_text_round_trips(world_tokenizer, text):
    assert world_tokenizer.decode(world_tokenizer.encode(text)) == text


def test_every_world_word_is_one_token_wherever_it_stands(world_tokenizer, world_texts):
    words = sorted({w for t in world_texts for w in words_of(t)})
    assert len(words) == 52
    assert all(len(world_tokenizer.encode(w)) == 1 for w in words), words
    # the answer "red" alone is the same token as "red" inside a caption
    assert world_tokenizer.encode("red") == world_tokenizer.encode("a red circle")[1:2]
    assert 256 + len(DEFAULT_SPECIALS) < world_tokenizer.vocab_size < WORLD_VOCAB_SIZE


def test_vocab_size_caps_the_merges(world_texts):
    tok = train_world_tokenizer(world_texts, vocab_size=300)
    assert tok.vocab_size == 300
    assert len(tok.encode("a large purple triangle at the bottom right")) > 8


def test_special_tokens_are_inserted_by_id_only(world_tokenizer):
    text = "say <eos> now"
    ids = world_tokenizer.encode(text)
    assert not set(ids) & set(world_tokenizer.special_ids.values())
    assert world_tokenizer.decode(ids) == text
    bos, eos = world_tokenizer.token_to_id("<bos>"), world_tokenizer.token_to_id("<eos>")
    framed = [bos, *world_tokenizer.encode("a red circle"), eos]
    assert world_tokenizer.decode(framed) == "a red circle"
    assert world_tokenizer.decode(framed, skip_special=False) == "<bos> a red circle<eos>"


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_prompt_is_an_error(world_tokenizer, text):
    with pytest.raises(ValueError, match="empty prompt"):
        world_tokenizer.encode(text)


def test_empty_prompt_in_batch_names_its_index(world_tokenizer):
    with pytest.raises(ValueError, match="empty prompt at index 1"):
        world_tokenizer.encode_batch(["a red circle", ""])


def test_decode_rejects_ids_outside_the_vocabulary(world_tokenizer):
    with pytest.raises(ValueError, match=r"outside the text vocabulary \[0, "):
        world_tokenizer.decode([5, world_tokenizer.vocab_size])


def test_unknown_words_are_named(world_tokenizer):
    text = "a large red circel at the top lefty and a Red square"
    assert world_tokenizer.unknown_words(text) == ["circel", "lefty", "Red"]
    with pytest.raises(ValueError, match="'circel' \\(did you mean 'circle'") as info:
        world_tokenizer.check_words(text)
    assert "'lefty'" in str(info.value) and "'Red'" in str(info.value)
    world_tokenizer.check_words("is there a red triangle?")  # held-out pair, but known words
    assert unknown_words("a b a c", {"a"}) == ["b", "c"]
    check_words("a, a!", {"a"})


def test_save_load_round_trip(world_tokenizer, world_texts, tmp_path):
    world_tokenizer.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {TOKENIZER_FILE, CODEC_FILE, WORDS_FILE}
    loaded = TextTokenizer.load(tmp_path)
    assert loaded.vocab_size == world_tokenizer.vocab_size
    assert loaded.special == world_tokenizer.special
    assert loaded.special_ids == world_tokenizer.special_ids
    assert loaded.words == world_tokenizer.words
    assert loaded.encode_batch(world_texts) == world_tokenizer.encode_batch(world_texts)
    assert loaded.encode("say <eos> now") == world_tokenizer.encode("say <eos> now")


def test_add_special_keeps_every_existing_id(world_tokenizer, tmp_path):
    registry = DEFAULT_SPECIALS.extend(["<asr>"])
    extended = world_tokenizer.add_special(registry)
    assert extended.token_to_id("<asr>") == world_tokenizer.vocab_size
    assert extended.vocab_size == world_tokenizer.vocab_size + 1
    assert {n: extended.token_to_id(n) for n in DEFAULT_SPECIALS} == world_tokenizer.special_ids
    text = "what color is the cross?"
    assert extended.encode(text) == world_tokenizer.encode(text)
    assert TextTokenizer.load(extended.save(tmp_path)).token_to_id("<asr>") == world_tokenizer.vocab_size
    with pytest.raises(ValueError, match="does not extend"):
        world_tokenizer.add_special(SpecialTokens(("<asr>", *DEFAULT_SPECIALS)))


def test_load_errors_name_the_problem(world_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        TextTokenizer.load(tmp_path / "nowhere")
    with pytest.raises(
        FileNotFoundError, match=re.escape("missing ['tokenizer.json', 'text_codec.json', 'words.json']")
    ):
        TextTokenizer.load(tmp_path)
    world_tokenizer.save(tmp_path)
    meta = json.loads((tmp_path / CODEC_FILE).read_text())
    for change, message in [({"kind": "image_vq"}, "kind 'image_vq', expected 'text_bpe'"),
                            ({"version": 99}, "version 99")]:  # fmt: skip
        (tmp_path / CODEC_FILE).write_text(json.dumps({**meta, **change}))
        with pytest.raises(ValueError, match=message):
            TextTokenizer.load(tmp_path)
    (tmp_path / CODEC_FILE).write_text(json.dumps({**meta, "special": {**meta["special"], "<pad>": 7}}))
    with pytest.raises(ValueError, match="do not match"):
        TextTokenizer.load(tmp_path)
    (tmp_path / CODEC_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TextTokenizer.load(tmp_path)


def test_training_errors(world_texts):
    with pytest.raises(ValueError, match="vocab_size 100 too small: need at least 276"):
        TextTokenizer.train(world_texts, vocab_size=100)
    with pytest.raises(ValueError, match="no training text"):
        TextTokenizer.train([])
