"""Stage 1: the corpus becomes a dataset: corpus files, tokenizer, windows, Word2Vec embeddings, the Parquet dataset and its manifest (preprocess.py runs them on Spark)."""
