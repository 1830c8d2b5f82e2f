"""HTTP routes: the seed's API (`legacy`) and the OpenAI-compatible one (`openai`)."""
