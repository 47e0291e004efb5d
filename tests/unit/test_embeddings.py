import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors

from horovod_llm.data import embeddings
from horovod_llm.model import GPT, GPTConfig

STD = 0.02


def test_matrix_rows_align_with_ids_and_missing_ids_keep_a_random_init():
    vectors = KeyedVectors(vector_size=4)
    vectors.add_vectors(["5", "7"], np.array([[1, 0, 0, 0], [0, 2, 0, 0]], dtype=np.float32))
    matrix, coverage = embeddings.aligned_matrix(vectors, vocab_size=10, vector_size=4, seed=0, std=STD)
    assert matrix.shape == (10, 4) and matrix.dtype == np.float32
    assert coverage == pytest.approx(0.2)
    # trained rows keep their direction, rescaled to the embedding init's scale
    assert np.allclose(matrix[5] / np.linalg.norm(matrix[5]), [1, 0, 0, 0])
    assert np.allclose(matrix[7] / np.linalg.norm(matrix[7]), [0, 1, 0, 0])
    trained_rms = np.sqrt(np.mean(matrix[[5, 7]] ** 2))
    assert trained_rms == pytest.approx(STD, rel=1e-5)
    assert np.abs(matrix[0]).max() < 6 * STD  # untrained: normal(0, 0.02)


def test_word2vec_learns_from_id_sequences(tmp_path):
    path = tmp_path / "sentences.txt"
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(3000):
        # ids 10 and 11 share contexts 20-29; id 12 lives among 30-39
        a, b = rng.integers(20, 30, size=2)
        c, d = rng.integers(30, 40, size=2)
        lines += [f"{a} {rng.choice([10, 11])} {b}", f"{c} 12 {d}"]
    path.write_text("\n".join(lines) + "\n")
    model = embeddings.train_word2vec(path, vector_size=8, window=1, min_count=1, epochs=10, workers=1, seed=1)
    assert model.wv.similarity("10", "11") > model.wv.similarity("10", "12") + 0.2


def test_matrix_round_trip_and_model_init(tmp_path):
    matrix = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    url = str(tmp_path / "embeddings" / "word2vec.npy")
    embeddings.save_matrix(url, matrix)
    loaded = embeddings.load_matrix(url)
    assert np.array_equal(loaded, matrix)
    model = GPT(GPTConfig(vocab_size=20, block_size=4, n_layer=1, n_head=2, n_embd=8))
    model.init_token_embedding(torch.from_numpy(loaded))
    assert torch.equal(model.wte.weight.detach(), torch.from_numpy(matrix))
    assert torch.equal(model.lm_head.weight.detach(), torch.from_numpy(matrix))  # tied
    with pytest.raises(ValueError, match="shape"):
        model.init_token_embedding(torch.zeros(20, 4))
