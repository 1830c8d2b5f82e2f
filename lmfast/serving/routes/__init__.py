"""HTTP routes: the legacy /generated_texts/ API (`legacy`), the OpenAI-compatible one (`openai`) and vLLM's tokenizer endpoints (`tokenizer`)."""
