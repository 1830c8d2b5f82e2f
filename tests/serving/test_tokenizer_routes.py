"""vLLM's /detokenize and /tokenizer_info on the real GPT-2 tokenizer, as lm-eval uses them."""

from __future__ import annotations


def test_detokenize_round_trips_special_tokens_included(client, generator):
    text = "God is dead.<|endoftext|>And we have killed him."
    tokens = generator.codec.tokenizer.encode(text, add_special_tokens=False).ids
    assert 50256 in tokens
    assert client.post("/detokenize", json={"tokens": tokens}).json() == {"prompt": text}


def test_tokenizer_info_gives_the_eos_token_that_lm_eval_looks_for(client, generator):
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == "<|endoftext|>" and info["bos_token"] == "<|endoftext|>"
    assert info["vocab_size"] == 50257 and info["model_max_length"] == generator.max_context
    # lm-eval's RemoteTokenizer derives eos_token_id as encode(eos_token)[0]
    assert generator.codec.encode(info["eos_token"]) == [50256]


def test_bad_detokenize_requests_are_422_naming_the_field(client):
    for tokens in ([1, 50257], [-1], ["a"]):
        response = client.post("/detokenize", json={"tokens": tokens})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][:2] == ["body", "tokens"]
    assert client.post("/detokenize", content=b'{"tokens": [1]}').status_code == 415


def test_tokenizer_routes_need_the_api_key(make_client):
    with make_client(api_key="sesame") as client:
        assert client.get("/tokenizer_info").status_code == 401
        assert client.post("/detokenize", json={"tokens": [1]}).status_code == 401
        authorized = {"Authorization": "Bearer sesame"}
        assert client.post("/detokenize", json={"tokens": [464]}, headers=authorized).json() == {
            "prompt": "The"
        }


def test_tokenize_honours_add_special_tokens_and_return_token_strs(generator, tiny_model_dir):
    """vLLM's fields. GPT-2 adds no special tokens, so this tokenizer is given a BOS-adding
    post-processor (as Llama's): a prompt gets it by default, not with add_special_tokens false
    (what lm-eval's remote tokenizer sends), and messages do not unless asked."""
    import copy

    from fastapi.testclient import TestClient
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    from lmfast.generation.text import TextCodec
    from lmfast.serving.app import create_app
    from lmfast.serving.config import ServeConfig

    tokenizer = Tokenizer.from_str(generator.codec.tokenizer.to_str())
    tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 50256)]
    )
    with_bos = copy.copy(generator)
    with_bos.codec = TextCodec(tokenizer)
    with TestClient(create_app(ServeConfig(model=str(tiny_model_dir)), generator=with_bos)) as client:
        data = client.post("/tokenize", json={"prompt": "God is dead", "return_token_strs": True}).json()
        assert data["tokens"] == [50256, 13482, 318, 2636]
        assert data["token_strs"] == ["<|endoftext|>", "God", "Ġis", "Ġdead"]
        bare = client.post("/tokenize", json={"prompt": "God is dead", "add_special_tokens": False}).json()
        assert bare["tokens"] == [13482, 318, 2636] and bare["token_strs"] is None
