"""Opt-in tooling: a real small LLM via llama.cpp and public labelled data (BIG-bench), offline."""
