import math

import torch

from sasq.data import eval_windows, load_corpus, tokenize
from sasq.evaluate import perplexity


def test_matches_transformers_loss_loop(stories, wikitext_dir):
    corpus = load_corpus("wikitext2", "test", str(wikitext_dir))
    ids = tokenize(stories.tokenizer, corpus.text[:40_000])
    windows = eval_windows(ids, 256, 6)
    with torch.no_grad():
        losses = [float(stories.model(w[None], labels=w[None]).loss) for w in windows]
    reference = math.exp(sum(losses) / len(losses))
    result = perplexity(stories.model, windows, batch_size=4)
    assert result.windows == 6
    assert result.tokens == 6 * 255
    assert abs(result.ppl - reference) / reference < 1e-5


def test_batch_size_does_not_change_result(stories):
    ids = torch.randint(3, 512, (3, 64), generator=torch.Generator().manual_seed(1))
    one = perplexity(stories.model, ids, batch_size=1)
    three = perplexity(stories.model, ids, batch_size=3)
    assert abs(one.ppl - three.ppl) / one.ppl < 1e-5
