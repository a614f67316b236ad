"""The tiny real TinyStories model (Llama 2 architecture) from ../shared, when it is there."""

import re

import torch

from conftest import STORIES, needs_stories
from load import load


@needs_stories
def test_stories260k_tells_a_story():
    import transformers

    model, tokenizer = load(STORIES, dtype="float32")
    prompt = tokenizer.encode("Once upon a time")
    ours = model.generate(torch.tensor(prompt), 40, stop={tokenizer.eos_id})
    reference = transformers.AutoModelForCausalLM.from_pretrained(STORIES).eval()
    theirs = reference.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)[0, len(prompt) :]
    assert ours == theirs.tolist()[: len(ours)]
    sentence = tokenizer.decode(ours).split(".")[0]  # the first sentence, without its full stop
    words = re.findall(r"[A-Za-z]+", sentence)
    assert len(words) >= 5 and re.fullmatch(r"[A-Za-z ,]+", sentence), sentence
