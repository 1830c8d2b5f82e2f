"""vLLM's /tokenize, /detokenize and /tokenizer_info on the real GPT-2 tokenizer, as lm-eval uses them."""

from __future__ import annotations


def test_tokenize_matches_the_model_tokenizer(client, generator):
    text = "Supposing that Truth is a woman--what then?"
    data = client.post("/tokenize", json={"prompt": text}).json()
    assert data["tokens"] == generator.codec.encode(text)
    assert data["count"] == len(data["tokens"]) and data["max_model_len"] == generator.max_context
    assert data["token_strs"] is None
    strs = client.post("/tokenize", json={"prompt": "Truth is", "return_token_strs": True}).json()[
        "token_strs"
    ]
    assert strs == ["Truth", "Ġis"]  # GPT-2's vocabulary strings


def test_detokenize_round_trips_special_tokens_included(client, generator):
    text = "God is dead.<|endoftext|>And we have killed him."
    tokens = client.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()["tokens"]
    assert 50256 in tokens
    assert client.post("/detokenize", json={"tokens": tokens}).json() == {"prompt": text}


def test_tokenizer_info_gives_the_eos_token_that_lm_eval_looks_for(client):
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == "<|endoftext|>" and info["vocab_size"] == 50257
    # lm-eval's RemoteTokenizer derives eos_token_id as encode(eos_token, add_special_tokens=False)[0]
    body = {"prompt": info["eos_token"], "add_special_tokens": False}
    assert client.post("/tokenize", json=body).json()["tokens"] == [50256]


def test_bad_tokenizer_requests_are_422_naming_the_field(client):
    response = client.post("/detokenize", json={"tokens": [1, 50257]})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "tokens"]
    response = client.post("/detokenize", json={"tokens": [-1]})
    assert response.status_code == 422
    raw = b'{"prompt": "a \\udc00"}'
    response = client.post("/tokenize", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "prompt"]
    assert client.post("/tokenize", content=b'{"prompt": "x"}').status_code == 415


def test_tokenizer_routes_need_the_api_key(make_client):
    with make_client(api_key="sesame") as client:
        assert client.get("/tokenizer_info").status_code == 401
        assert client.post("/tokenize", json={"prompt": "x"}).status_code == 401
        authorized = {"Authorization": "Bearer sesame"}
        assert client.post("/tokenize", json={"prompt": "x"}, headers=authorized).json()["count"] == 1
