import hashlib
import json

from charfw.models.configs import TOKENIZER_DIR


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shipped_files_are_the_clip_vit_l14_files():
    assert _sha(TOKENIZER_DIR / "merges.txt") == "9fd691f7c8039210e0fced15865466c65820d09b63988b0174bfe25de299051a"
    assert _sha(TOKENIZER_DIR / "vocab.json") == "5047b556ce86ccaf6aa22b3ffccfc52d391ea4accdab9c2f2407da5b742d4363"
    vocab = json.loads((TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["a</w>"] == 320 and vocab["photo</w>"] == 1125
    assert vocab["cat</w>"] == 2368 and vocab["dog</w>"] == 1929
    assert vocab["!"] == 0 and vocab["!</w>"] == 256


def test_clip_tokenizer_from_shipped_files_gives_clip_ids():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("A photo of a DOG").input_ids == [49406, 320, 1125, 539, 320, 1929, 49407]
    assert tok("Hello, world!").input_ids == [49406, 3306, 267, 1002, 256, 49407]
    # reference ids from OpenAI's own (independent) tokenizer implementation
    assert tok("krnk, white background, from horizontal").input_ids == [
        49406, 7309, 17456, 267, 1579, 5994, 267, 633, 25775, 49407]
    assert tok("1girl, solo, looking at viewer, blue hair").input_ids == [
        49406, 272, 1611, 267, 5797, 267, 1312, 536, 15061, 267, 1746, 2225, 49407]
    # the positional (vocab, merges) constructor reads the same files
    direct = CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"))
    assert direct("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_padded_to_77(tiny):
    ids = tiny.tokenizer("krnk", padding="max_length", max_length=tiny.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (1, 77)
    assert ids[0, :4].tolist() == [49406, 7309, 17456, 49407] and int(ids[0, -1]) == 49407
