"""Trainers of selftok-hf, each on accelerate: the tokenizer (``tokenizer``), the one-step renderer
(``renderer``), with the shared loop (``loop``) and image data (``data``); and the data of LM training:
``dataset_tokenization`` turns a ``datasets`` dataset into the Selftok ids ``sft`` reads."""
