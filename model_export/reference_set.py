"""The built-in reference sentences, and their PyTorch fp32 energies written into an artifact.

Export runs the model on ``REFERENCE_SENTENCES`` and stores the energies in the artifact
(service/artifact/reference.py), so that ``electric verify`` can check every ONNX variant
without the checkpoint. The set is varied on purpose: short and long, questions and quotes,
numbers and symbols, casing, accents, ungrammatical and scrambled text (whose energies differ
most from fluent text), so that a variant has to be right over the whole range of energies, not
only on typical ones. Changing the set changes what new exports store; old artifacts keep theirs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model_export.model import Electric
from service.artifact import ReferenceSpec
from service.artifact.reference import ReferenceSentence, write_reference
from service.tokenization import SentenceTokenizer

REFERENCE_SENTENCES = [
    "The cat sat on the mat.",
    "the cat sat on the mat",
    "THE CAT SAT ON THE MAT!",
    "Yes.",
    "OK.",
    "No, thank you.",
    "Wow!",
    "Where is the nearest train station?",
    "What time does the meeting start tomorrow morning?",
    "To be, or not to be, that is the question.",
    "I think, therefore I am.",
    "Colorless green ideas sleep furiously.",
    "She sells sea shells by the sea shore.",
    "The quick brown fox jumps over the lazy dog.",
    "Dog the lazy over jumps fox brown quick the.",
    "The the the the the.",
    "He don't know nothing about it.",
    "Their going too the store later, weather or not it rains.",
    "my name is john and i live in new york",
    "The committee approved the budget after a long debate on Tuesday.",
    "It's 3:45 p.m. and the train to Boston leaves at 4:10.",
    "The population grew from 1,200 in 1850 to roughly 2.5 million in 2020.",
    "He bought 3 apples, 2 pears and a dozen eggs for $7.50.",
    "Call 555-0123 or e-mail info@example.com before Friday, 12 May.",
    "The results (see Table 2) were significant at p < 0.05.",
    "NASA launched the James Webb Space Telescope on December 25, 2021.",
    "In 1492, Columbus sailed across the Atlantic Ocean with three ships.",
    "Water boils at 100 degrees Celsius at sea level.",
    "\"Stop,\" she said, \"you're going to break it.\"",
    "I can't believe it's already the 21st century!",
    "Rock 'n' roll never dies; it just gets louder.",
    "The café on the corner serves crème brûlée on Sundays.",
    "Please turn off your phones: the film is about to begin.",
    "Despite the heavy rain, the match went ahead as planned, and the home team won by two goals.",
    ("Although it was late and everyone was tired after the long drive from the coast, they "
     "stayed up talking about the old days until well past midnight."),
    ("Once upon a time, in a small village at the edge of a vast forest, there lived an old "
     "woodcutter, his wife and their two children, Hansel and Gretel, who were often hungry "
     "because the family was very poor."),
]


def write_reference_energies(model: Electric, folder: Path, tokenizer_file: str,
                             sentences: list[str] = REFERENCE_SENTENCES) -> ReferenceSpec:
    """Energies of ``model`` (fp32, eval mode) on ``sentences``, written to ``folder``.

    Each sentence runs alone, so no padding takes part: the reference is the model's own answer,
    and a variant's padded batch is judged against it. Token ids come from the service's own
    tokenizer on the artifact's tokenizer file, truncated at max_positions.
    """
    tok = SentenceTokenizer.from_file(folder / tokenizer_file, model.cfg.max_positions)
    energy = model.energy.eval()
    dtype = next(energy.parameters()).dtype
    if dtype != torch.float32:
        raise ValueError(f"reference energies come from the fp32 model; this one is {dtype}")
    rows = []
    with torch.no_grad():
        for text, encoded in zip(sentences, tok.encode(sentences, truncate=True)):
            ids = torch.from_numpy(encoded.ids).unsqueeze(0)  # (1, T)
            energies = energy(ids, torch.ones_like(ids))[0]  # (T,)
            rows.append(ReferenceSentence(text, tuple(encoded.ids.tolist()),
                                          energies.numpy().astype(np.float32)))
    return write_reference(folder, rows,
                           computed_by=f"pytorch {torch.__version__} fp32, each sentence alone")
