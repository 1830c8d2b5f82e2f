"""Model sources that are not a plain Hugging Face directory (GGUF files), turned into one."""
