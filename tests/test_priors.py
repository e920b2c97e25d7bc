"""The batched prior draws keep every per-sample stream byte for byte: compared here with the one-generator-per-
sample reference they replaced, over many indices, seeds (one- and two-word), labels, shapes and the renoise stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmt_pipeline.priors import RENOISE, REFERENCE, draw_priors, draw_renoise, seed_words, stream_seed
from cmt_pipeline.errors import CMTError
from cmt_pipeline.seeding import sample_seed


def reference_priors(seed, indices, shape, num_classes, class_labels):
    noise = np.empty((len(indices), *shape), np.float32)
    labels = np.full(len(indices), -1, np.int64)
    for j, i in enumerate(indices):
        g = torch.Generator().manual_seed(sample_seed(seed, int(i)))
        noise[j] = torch.randn(shape, generator=g).numpy()
        if num_classes:
            labels[j] = torch.randint(num_classes, (1,), generator=g).item() if class_labels == "random" \
                else int(class_labels)
    return noise, labels


def reference_stream_seed(seed, index, stream):
    return int(np.random.SeedSequence([seed, index, stream]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def reference_renoise(seed, indices, shape, steps):
    out = np.empty((len(indices), steps, *shape), np.float32)
    for j, i in enumerate(indices):
        g = torch.Generator().manual_seed(reference_stream_seed(seed, int(i), RENOISE))
        out[j] = torch.randn((steps, *shape), generator=g).numpy()
    return out


SEEDS = [0, 1, 7, 2**31 + 5, 2**32 - 1, 2**32, 2**40 + 3, 2**63 - 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_seed_words_match_seedsequence(seed):
    idx = np.r_[np.arange(300), np.random.default_rng(seed % 2**32).integers(0, 2**32, 300)]
    assert seed_words(seed, idx).tolist() == [sample_seed(seed, int(i)) for i in idx]
    for stream in (RENOISE, REFERENCE, 2**33 + 1):
        assert stream_seed(seed, int(idx[-1]), stream) == reference_stream_seed(seed, int(idx[-1]), stream)
    assert seed_words(seed, idx[:50], RENOISE).tolist() == [reference_stream_seed(seed, int(i), RENOISE)
                                                           for i in idx[:50]]


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 5, 7), (1, 1, 3), (3, 32, 32)])
@pytest.mark.parametrize("num_classes,class_labels", [(0, "random"), (10, "random"), (1000, "random"), (10, "3")])
def test_priors_match_per_sample_streams(shape, num_classes, class_labels):
    for seed in (0, 2**40 + 3):
        idx = np.r_[np.arange(0, 200), [4095, 10**6, 2**32 - 1]]
        got, want = draw_priors(seed, idx, shape, num_classes, class_labels), \
            reference_priors(seed, idx, shape, num_classes, class_labels)
        assert got[0].dtype == np.float32 and got[1].dtype == np.int64
        assert got[0].tobytes() == want[0].tobytes() and np.array_equal(got[1], want[1])


@pytest.mark.parametrize("shape,steps", [((1, 8, 8), 16), ((3, 5, 7), 3), ((1, 1, 3), 1)])
def test_renoise_matches_per_sample_streams(shape, steps):
    idx = np.r_[np.arange(64), [2**31]]
    assert draw_renoise(5, idx, shape, steps).tobytes() == reference_renoise(5, idx, shape, steps).tobytes()


def test_out_of_range_indices_are_refused():
    with pytest.raises(CMTError, match="indices"):
        seed_words(0, [2**32])
    with pytest.raises(CMTError, match="non-negative"):
        seed_words(-1, [0])


@pytest.mark.parametrize("num_classes,class_labels", [(0, "random"), (10, "random"), (10, "3")])
def test_the_priors_process_hands_over_draw_priors_bytes_in_order(num_classes, class_labels):
    from cmt_pipeline.generation.prefetch import DEPTH, Priors

    batches = [(0, 5), (5, 5), (10, 2), (100, 5), (2**32 - 3, 3), (7, 1), (40, 5)]  # more than the ring holds
    assert len(batches) > DEPTH
    with Priors(batches, 5, 11, (2, 3, 3), num_classes, class_labels) as priors:
        for offset, n in batches:
            noise, labels = priors.take()
            want = draw_priors(11, np.arange(offset, offset + n), (2, 3, 3), num_classes, class_labels)
            assert np.array_equal(noise[:n], want[0]) and np.array_equal(labels[:n], want[1])
            priors.done()


def test_a_failed_priors_process_is_one_clear_error():
    from cmt_pipeline.generation.prefetch import Priors

    with Priors([(0, 2), (2**32 - 1, 2)], 2, 0, (1, 2, 2), 0, "random") as priors:  # the second passes 2**32
        priors.take()
        priors.done()
        with pytest.raises(CMTError, match=r"the priors process died \(exit code 1\); rerun"):
            priors.take()
