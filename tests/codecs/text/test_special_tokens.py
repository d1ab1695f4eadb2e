import pytest

from panglot.codecs.text.special import DEFAULT_SPECIALS, SpecialTokens, UnknownSpecialToken

# The ids of every tokenizer trained with the default registry: changing this order breaks checkpoints.
GOLDEN_ORDER = (
    "<pad>", "<bos>", "<eos>",
    "<boi>", "<eoi>", "<bov>", "<eov>", "<bos_speech>", "<eos_speech>",
    "<caption>", "<vqa>", "<t2i>", "<edit>",
    "<user>", "<assistant>",
    "<mask>", "<infill>",
    "<retrieved>", "<doc_sep>",
    "<uncond>",
)  # fmt: skip


def test_default_registry_order_is_stable():
    assert DEFAULT_SPECIALS.names == GOLDEN_ORDER
    assert [DEFAULT_SPECIALS.index(n) for n in GOLDEN_ORDER] == list(range(len(GOLDEN_ORDER)))
    assert "<unk>" not in DEFAULT_SPECIALS  # byte-level BPE encodes every string


def test_extend_appends_and_keeps_positions():
    extended = DEFAULT_SPECIALS.extend(["<asr>", "<tts>"])
    assert extended.names[: len(DEFAULT_SPECIALS)] == DEFAULT_SPECIALS.names
    assert extended.index("<asr>") == len(DEFAULT_SPECIALS)
    assert extended.index("<tts>") == len(DEFAULT_SPECIALS) + 1
    assert extended.starts_with(DEFAULT_SPECIALS) and not DEFAULT_SPECIALS.starts_with(extended)
    assert "<asr>" not in DEFAULT_SPECIALS  # the original is untouched


@pytest.mark.parametrize("names", [["<boi>"], ["<asr>", "<asr>"]])
def test_extend_rejects_duplicates(names):
    with pytest.raises(ValueError, match=r"already registered|duplicate"):
        DEFAULT_SPECIALS.extend(names)


@pytest.mark.parametrize("name", ["boi", "<BOI>", "<1x>", "<a b>", "<>", ""])
def test_invalid_names_are_rejected(name):
    with pytest.raises(ValueError, match="invalid special-token name"):
        SpecialTokens(("<pad>", name))


def test_unknown_name_error_lists_the_registry():
    with pytest.raises(UnknownSpecialToken) as info:
        DEFAULT_SPECIALS.index("<image>")
    assert isinstance(info.value, KeyError)
    assert "'<image>'" in str(info.value) and "<boi>" in str(info.value)
