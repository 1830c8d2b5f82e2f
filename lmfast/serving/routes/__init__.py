"""HTTP routes: the seed's API (`legacy`), the OpenAI-compatible one (`openai`) and vLLM's tokenizer endpoints (`tokenizer`)."""
