"""Generation for every lmlab language model: sampling, the cached decode loop, stop strings.

``generate_ids(model, ids, n, ...)`` continues token ids (``generate`` is the same
function); ``generate_text(model, tokenizer, prompts, n, ...)`` does it for strings, with
streaming and string stop sequences. The package sits above :mod:`lmlab.models`: models
own their caches (:mod:`lmlab.nn.attention`), this package owns the loop;
``beam_search`` (:mod:`lmlab.generate.beam`) serves decoders and encoder-decoders alike.
"""

from lmlab.generate.beam import Beam, beam_search
from lmlab.generate.decode import decode, generate_ids
from lmlab.generate.sampling import process_logits, select_next
from lmlab.generate.text import Completion, IncrementalDecoder, StopStrings, generate_text, prompt_ids

generate = generate_ids

__all__ = ["Beam", "beam_search", "decode", "generate", "generate_ids", "generate_text", "process_logits",
           "select_next", "Completion", "IncrementalDecoder", "StopStrings", "prompt_ids"]
